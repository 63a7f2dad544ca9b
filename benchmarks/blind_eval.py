"""Blind upscaling measured against the truth, on photos never used in training (Set5 and Set14).

Grid: blur widths {0.2, 0.6, 1.0, 1.4, 1.8, 2.0} x s/2 (HR pixels) x noise {0, 5, 15, 30, 50}, on HR centre crops
(``--crop`` pixels) degraded exactly as ``udvd eval`` degrades them (``evaluate.degraded_input``: 15 x 15 Gaussian,
MATLAB bicubic down, AWGN, uint8). Per cell: the estimate's mean absolute error (blur in HR pixels, noise in levels),
and the mean Y-PSNR (border = scale) of the model told the estimate (blind: what ``udvd upscale`` does when it is
told nothing), told the truth (oracle), told the previous fixed default (blur 1.0, noise 0), and of bicubic.

Spatially varying degradations (``--varying``): images whose blur varies across the frame (a depth-of-field mask:
sharp in an ellipse around the centre, blurred around it; a left-to-right ramp) and whose noise varies (a top-to-
bottom ramp), built with the package's per-pixel kernels and noise maps; PSNR of "auto-map", "auto", the oracle maps
and every single global value of a sweep.

    python benchmarks/blind_eval.py --models udvd-x2 udvd-x2-small udvd-x3-small udvd-x4-small --varying
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from udvd_triton import UDVD, __version__
from udvd_triton.blind import estimate_degradation
from udvd_triton.degradation import degrade, gaussian_kernels, imresize
from udvd_triton.evaluate import evaluate, folder_images
from udvd_triton.files import write_json
from udvd_triton.inference import upscale
from udvd_triton.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
SETS = [ROOT.parent / "shared" / "data" / "sets" / name for name in ("set5", "set14")]
BLURS = (0.2, 0.6, 1.0, 1.4, 1.8, 2.0)  # x s/2
NOISES = (0.0, 5.0, 15.0, 30.0, 50.0)
OLD_DEFAULT = (1.0, 0.0)  # what `udvd upscale` assumed before it estimated


def centre_crops(images: list[tuple[str, np.ndarray]], crop: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, img in images:
        h, w = img.shape[:2]
        side_h, side_w = min(crop, h) // 12 * 12, min(crop, w) // 12 * 12
        y, x = (h - side_h) // 2, (w - side_w) // 2
        out.append((name, np.ascontiguousarray(img[y : y + side_h, x : x + side_w])))
    return out


def grid(name: str, images: list[tuple[str, np.ndarray]]) -> list[dict]:
    model = UDVD.from_pretrained(name)
    s = model.scale
    sigmas = [round(b * s / 2, 3) for b in BLURS]
    estimates: dict[tuple[float, float], list] = {}
    timings = {"estimate_s": 0.0, "upscale_s": 0.0, "images": 0}

    def oracle(lr: np.ndarray, sigma: float, noise: float) -> np.ndarray:
        return upscale(model, lr, sigma, noise)

    def blind(lr: np.ndarray, sigma: float, noise: float) -> np.ndarray:
        start = time.perf_counter()
        est = estimate_degradation(lr, s)
        middle = time.perf_counter()
        out = upscale(model, lr, est.blur_sigma, est.noise_level)
        timings["estimate_s"] += middle - start
        timings["upscale_s"] += time.perf_counter() - middle
        timings["images"] += 1
        estimates.setdefault((sigma, noise), []).append((est.blur_sigma, est.noise_level, est.note))
        return out

    def old_default(lr: np.ndarray, sigma: float, noise: float) -> np.ndarray:
        return upscale(model, lr, *OLD_DEFAULT)

    runs = {k: evaluate(fn, s, images, sigmas, NOISES) for k, fn in
            (("oracle", oracle), ("blind", blind), ("old_default", old_default))}
    rows = []
    for o, b, d in zip(runs["oracle"], runs["blind"], runs["old_default"]):
        est = estimates[(o["sigma"], o["noise"])]
        rows.append({
            "model": name, "scale": s, "sigma": o["sigma"], "noise": o["noise"],
            "blur_mae": float(np.mean([abs(e[0] - o["sigma"]) for e in est])),
            "noise_mae": float(np.mean([abs(e[1] - o["noise"]) for e in est])),
            "fallbacks": sum(e[2] is not None for e in est),
            "psnr_blind": b["psnr"], "psnr_oracle": o["psnr"], "psnr_old_default": d["psnr"],
            "psnr_bicubic": o["bicubic_psnr"],
            "per_image": [{"image": pb["image"], "blind": pb["psnr"], "oracle": po["psnr"], "blur": e[0], "noise": e[1]}
                          for pb, po, e in zip(b["per_image"], o["per_image"], est)],
        })  # fmt: skip
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_image"}), flush=True)
    rows.append({"model": name, "timing": timings})
    return rows


def varying(name: str, images: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Per-pixel blur (depth-of-field mask, ramp) and noise (ramp) on the images; PSNR per method."""
    model = UDVD.from_pretrained(name)
    s = model.scale
    lo, hi = 0.2 * s / 2, 2.0 * s / 2
    rows = []
    for img_name, hr in images:
        hh, ww = hr.shape[0] // s, hr.shape[1] // s
        yy, xx = np.mgrid[0:hh, 0:ww]
        ellipse = ((yy - hh / 2) / (0.35 * hh)) ** 2 + ((xx - ww / 2) / (0.35 * ww)) ** 2
        dof = lo + (hi - lo) / (1 + np.exp(-6 * (np.sqrt(ellipse) - 1)))  # sharp inside, blurred outside
        ramp = lo + (hi - lo) * xx / max(ww - 1, 1)
        cases = {"blur-dof": (dof, np.full((hh, ww), 5.0)), "blur-ramp": (ramp, np.full((hh, ww), 5.0)),
                 "noise-ramp": (np.full((hh, ww), 1.0 * s / 2), 50.0 * yy / max(hh - 1, 1))}
        for case, (sigma_map, noise_map) in cases.items():
            rng = np.random.default_rng([len(rows), 7])
            kernels = gaussian_kernels(torch.from_numpy(sigma_map.ravel())).view(hh, ww, 15, 15).numpy()
            lr = degrade(hr.astype(np.float64) / 255, kernels, s, noise_map, rng=rng)
            lr = np.clip(np.round(lr * 255), 0, 255).astype(np.uint8)
            score = lambda sr: psnr(sr, hr, border=s)  # noqa: E731
            row = {"model": name, "image": img_name, "case": case,
                   "auto-map": score(upscale(model, lr, "auto-map", "auto-map")),
                   "auto": score(upscale(model, lr, "auto", "auto")),
                   "oracle-maps": score(upscale(model, lr, sigma_map, noise_map)),
                   "bicubic": score(np.clip(np.round(imresize(lr / 255.0, s) * 255), 0, 255).astype(np.uint8))}
            if case.startswith("blur"):
                row["global"] = {f"{v:.2f}": score(upscale(model, lr, v, "auto")) for v in np.linspace(lo, hi, 7)}
            else:
                row["global"] = {f"{v:g}": score(upscale(model, lr, "auto", v)) for v in (0, 5, 10, 20, 30, 40, 50)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict) -> str:
    """Per model: the grid (mean Y-PSNR of blind / oracle / the old default / bicubic and the estimates' errors per
    cell) with its summary line, then the spatially varying cases averaged over their images."""
    out = []
    models = dict.fromkeys(r["model"] for r in result["grid"])
    for name in models:
        rows = [r for r in result["grid"] if r["model"] == name and "sigma" in r]
        timing = next(r["timing"] for r in result["grid"] if r["model"] == name and "timing" in r)
        gaps = [r["psnr_oracle"] - r["psnr_blind"] for r in rows]
        over_bicubic = min(r["psnr_blind"] - r["psnr_bicubic"] for r in rows)
        out += [f"{name} (x{rows[0]['scale']}; {len(result['images'])} images, HR crops of {result['crop']} px)\n",
                "| blur σ | noise | blind | oracle | old default (σ 1.0, noise 0) | bicubic | blind - oracle | "
                "blur error (HR px) | noise error | fallbacks |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['sigma']:g} | {r['noise']:g} | {r['psnr_blind']:.2f} | {r['psnr_oracle']:.2f} | "
                       f"{r['psnr_old_default']:.2f} | {r['psnr_bicubic']:.2f} | {r['psnr_blind'] - r['psnr_oracle']:+.2f} | "
                       f"{r['blur_mae']:.2f} | {r['noise_mae']:.2f} | {r['fallbacks']} |")
        out += ["", f"Blind - oracle: mean {-np.mean(gaps):+.2f} dB, worst cell {-max(gaps):+.2f} dB; blind - bicubic: "
                f"worst cell {over_bicubic:+.2f} dB; estimating took {100 * timing['estimate_s'] / timing['upscale_s']:.1f} % "
                f"of the upscaling time ({timing['images']} images).", ""]
    cases = {}
    for r in result["varying"]:
        cases.setdefault((r["model"], r["case"]), []).append(r)
    if cases:
        out += ["Spatially varying degradations (mean Y-PSNR over the images; best global: the best single value "
                "of the sweep, picked per case with the truth)\n",
                "| model | case | auto-map | auto | best global value | oracle maps | bicubic |", "|---|---|---:|---:|---:|---:|---:|"]
        for (name, case), rs in cases.items():
            mean = {k: np.mean([r[k] for r in rs]) for k in ("auto-map", "auto", "oracle-maps", "bicubic")}
            sweep = {v: np.mean([r["global"][v] for r in rs]) for v in rs[0]["global"]}
            best = max(sweep, key=sweep.get)
            out.append(f"| {name} | {case} | {mean['auto-map']:.2f} | {mean['auto']:.2f} | {sweep[best]:.2f} ({best}) | "
                       f"{mean['oracle-maps']:.2f} | {mean['bicubic']:.2f} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["udvd-x2", "udvd-x2-small", "udvd-x3-small", "udvd-x4-small"])
    parser.add_argument("--sets", nargs="+", type=Path, default=SETS)
    parser.add_argument("--crop", type=int, default=192, help="HR centre crop side (default 192)")
    parser.add_argument("--varying", action="store_true", help="also the spatially varying degradations")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "blind.json",
                        help="results (JSON); models already in it, on the same images and crop, are kept")
    parser.add_argument("--markdown", action="store_true", help="only print the tables of an earlier --out")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    torch.set_num_threads(2)
    images = centre_crops([img for folder in args.sets for img in folder_images(folder)], args.crop)
    result = {"what": __doc__.splitlines()[0], "udvd_triton": __version__, "torch": torch.__version__,
              "python": platform.python_version(), "machine": f"{platform.machine()} CPU, 2 threads",
              "images": [n for n, _ in images], "crop": args.crop, "grid": [], "varying": []}
    if args.out.exists():  # resume: a model measured on the same images is kept, not measured again
        earlier = json.loads(args.out.read_text())
        if (earlier.get("images"), earlier.get("crop")) == (result["images"], result["crop"]):
            result["grid"], result["varying"] = earlier["grid"], earlier["varying"]
    done = {part: {r["model"] for r in result[part]} for part in ("grid", "varying")}
    for name in args.models:
        if name not in done["grid"]:
            result["grid"] += grid(name, images)
            write_json(args.out, result)
    if args.varying:
        for name in args.models:
            if name not in done["varying"] and UDVD.from_pretrained(name).scale == 2:
                result["varying"] += varying(name, images[:8])
                write_json(args.out, result)
    print(markdown(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
