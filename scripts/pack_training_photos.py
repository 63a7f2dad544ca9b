"""Pack the training photographs into one folder small enough to travel to a GPU machine with the repository.

Every image under SRC (recursive) whose longer side passes ``--max-side`` pixels is shrunk with MATLAB's antialiased
bicubic (large wallpapers: also cleaner HR) and stored as a JPEG of quality ``--quality`` (4:4:4, no chroma
subsampling); smaller JPEGs are copied byte for byte, other small images stored as PNG. The licence of every file is
gathered from the ``LICENSES.tsv`` files beside the photos into ``DEST/LICENSES.tsv``. Standard test sets are
refused by name (Set5, Set14, BSD100 / BSD68 / CBSD68, Urban100, Manga109, Kodak, McMaster, DIV2K validation).

    scripts/fetch_debian_photos.sh data/photos && scripts/fetch_bsds_train.sh && scripts/fetch_t91.sh
    python scripts/copy_skimage_photos.py && python scripts/pack_training_photos.py data/photos data/train-photos
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from udvd_triton.degradation import imresize
from udvd_triton.imageio import image_files, load_rgb

TEST_SETS = re.compile(r"set5|set14|bsd100|bsd68|cbsd68|urban100|manga109|kodak|mcmaster|div2k.*valid|bsds.*(val|test)",
                       re.IGNORECASE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    licences: dict[str, list[str]] = {}
    for table in sorted(args.src.rglob("LICENSES.tsv")):
        with open(table, newline="") as f:
            for row in csv.reader(f, delimiter="\t"):
                if row and row[0] != "file":
                    licences[row[0]] = row[1:]
    args.dest.mkdir(parents=True, exist_ok=True)
    rows, total = [], 0
    for path in image_files(args.src):
        if TEST_SETS.search(str(path.relative_to(args.src))):
            sys.exit(f"pack_training_photos: {path} looks like a standard test set: never train on it")
        if path.name not in licences:
            sys.exit(f"pack_training_photos: no licence recorded for {path} (a LICENSES.tsv beside it)")
        img = load_rgb(path)
        factor = args.max_side / max(img.shape[:2])
        jpeg = path.suffix.lower() in (".jpg", ".jpeg")
        out = args.dest / f"{path.stem}.{'jpg' if jpeg else 'png'}"
        if factor >= 1 and jpeg:  # a JPEG that fits: its own bytes (re-encoding would only add artefacts)
            shutil.copyfile(path, out)
        elif factor >= 1:
            Image.fromarray(img).save(out)
        else:
            img = np.clip(np.round(imresize(img.astype(np.float64) / 255, factor) * 255), 0, 255).astype(np.uint8)
            out = out.with_suffix(".jpg")
            Image.fromarray(img).save(out, quality=args.quality, subsampling=0)
        total += out.stat().st_size
        rows.append([out.name, *licences[path.name]])
    with open(args.dest / "LICENSES.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([["file", "source", "license"], *rows])
    print(f"pack_training_photos: {len(rows)} photos, {total / 2**20:.1f} MiB in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
