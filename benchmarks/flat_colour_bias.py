"""Colour bias of every bundled model on flat colour fields: a model should return a flat field unchanged.

For each registry model and each colour, a 48 x 48 LR field of that colour (uint8, no noise) is upscaled with the
blur width at the middle of the scale's training range (the field has no structure, so the blur barely matters) and
noise 0; the bias is the mean output level minus the input level, per channel (0..255 levels), and the largest
|output - input| over all pixels. Writes ``results/flat-colour-bias.json`` and prints a markdown table.

    python benchmarks/flat_colour_bias.py
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from udvd_triton import UDVD, __version__
from udvd_triton.degradation import SIGMA_RANGES
from udvd_triton.files import write_json
from udvd_triton.registry import load_registry

OUT = Path(__file__).resolve().parent / "results" / "flat-colour-bias.json"
COLOURS = [(10, 200, 30), (128, 128, 128), (16, 16, 16), (240, 240, 240), (255, 0, 0), (0, 0, 255),
           (200, 150, 100), (30, 60, 90)]
SIZE = 48


def bias(model: UDVD, colour: tuple[int, int, int], sigma: float) -> dict:
    field = np.empty((SIZE, SIZE, 3), np.uint8)
    field[...] = colour
    out = model.upscale(field, blur_sigma=sigma, noise_level=0.0).astype(np.float64)
    mean = out.reshape(-1, 3).mean(0) - np.array(colour)
    return {"colour": list(colour), "mean_bias": [round(float(v), 3) for v in mean],
            "max_abs_error": float(np.abs(out - np.array(colour)).max())}


def main() -> int:
    torch.set_num_threads(2)
    rows = []
    for name, entry in load_registry().items():
        model = UDVD.from_pretrained(name)
        sigma = round(sum(SIGMA_RANGES[entry.scale]) / 2, 3)
        for colour in COLOURS:
            rows.append({"model": name, "sigma": sigma, **bias(model, colour, sigma)})
            print(json.dumps(rows[-1]), flush=True)
    write_json(OUT, {"what": __doc__.splitlines()[0], "udvd_triton": __version__, "torch": torch.__version__,
                     "python": platform.python_version(), "machine": platform.machine(), "rows": rows})
    print(markdown_table(rows))
    return 0


def markdown_table(rows: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| colour (RGB) | " + " | ".join(f"{m}: mean bias R,G,B / max" for m in models) + " |",
             "|---|" + "---:|" * len(models)]
    for colour in dict.fromkeys(tuple(r["colour"]) for r in rows):
        cells = []
        for m in models:
            r = next(r for r in rows if r["model"] == m and tuple(r["colour"]) == colour)
            cells.append(",".join(f"{v:+.1f}" for v in r["mean_bias"]) + f" / {r['max_abs_error']:.0f}")
        lines.append(f"| {','.join(map(str, colour))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
