#!/usr/bin/env python
"""Draw a training run's ``log.csv`` as a PNG: training loss (left) and validation PSNR beside bicubic (right).

    python scripts/plot_training_log.py runs/x2/log.csv weights/udvd-x2.train-curve.png --title "udvd-x2"

Pillow only (no plotting library is a dependency of the package); the PNG is written atomically.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageDraw

from udvd_triton.files import atomic_output

PANEL_W, PANEL_H, MARGIN = 420, 260, 48


def _panel(draw: ImageDraw.ImageDraw, x0: int, title: str, series: list[tuple[str, list[tuple[float, float]]]]) -> None:
    """One chart at horizontal offset x0: axes with min / max labels, one polyline per (colour, points) series."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)
    pad = 0.05 * (ymax - ymin) or 0.5  # keep flat lines (bicubic) off the frame
    ymin, ymax = ymin - pad, ymax + pad
    xmax = xmax if xmax > xmin else xmin + 1
    left, top, right, bottom = x0 + MARGIN, MARGIN // 2 + 14, x0 + PANEL_W - 10, PANEL_H - MARGIN // 2

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - xmin) / (xmax - xmin) * (right - left), bottom - (y - ymin) / (ymax - ymin) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 4), title, fill="black")
    draw.text((x0 + 2, top), f"{ymax:.3g}", fill="black")
    draw.text((x0 + 2, bottom - 10), f"{ymin:.3g}", fill="black")
    draw.text((left, bottom + 4), f"{xmin:.0f}", fill="black")
    draw.text((right - 40, bottom + 4), f"{xmax:.0f} steps", fill="black")
    for colour, pts in series:
        if len(pts) > 1:
            draw.line([at(x, y) for x, y in pts], fill=colour, width=2)


def plot(log_csv: Path, out: Path, title: str) -> None:
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [(float(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    val = [(float(r["step"]), float(r["val_psnr"])) for r in rows if r.get("val_psnr")]
    bicubic = [(float(r["step"]), float(r["val_bicubic_psnr"])) for r in rows if r.get("val_bicubic_psnr")]
    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, f"{title}: training loss (multi-stage L1)", [("#1f77b4", loss)])
    _panel(draw, PANEL_W, f"{title}: validation PSNR (dB), model (red) vs bicubic (grey)",
           [("#d62728", val), ("#7f7f7f", bicubic)])
    with atomic_output(out) as tmp:
        image.save(tmp, format="PNG")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path, help="a run's log.csv")
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--title", default="UDVD")
    args = p.parse_args()
    plot(args.log, args.out, args.title)


if __name__ == "__main__":
    main()
