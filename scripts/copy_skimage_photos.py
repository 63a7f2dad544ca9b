"""Copy the photographs that ship in the scikit-image wheel and are *not* `udvd eval`'s default images into a folder
for `udvd prepare-data`, with their licence (from scikit-image's documentation) in LICENSES.tsv.

    python scripts/copy_skimage_photos.py [DEST=data/photos/skimage]

Left out: astronaut, chelsea, coffee, rocket (the default evaluation images), drawings and synthetic images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

# name -> licence, as scikit-image's docstrings state it
PHOTOS = {
    "camera": "CC0 (Lav Varshney)",
    "coins": "no known copyright restrictions",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "retina": "CC0 1.0 (Wikimedia Commons)",
    "hubble_deep_field": "public domain (NASA / HubbleSite)",
    "text": "public domain (Wikipedia, Corner.png)",
}


def main() -> int:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "data/photos/skimage")
    dest.mkdir(parents=True, exist_ok=True)
    rows = ["file\tsource\tlicense"]
    for name, licence in PHOTOS.items():
        file = f"skimage__{name}.png"
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(dest / file)
        rows.append(f"{file}\tscikit-image {skimage.__version__} skimage.data.{name}\t{licence}")
    (dest / "LICENSES.tsv").write_text("\n".join(rows) + "\n")
    print(f"copy_skimage_photos: {len(PHOTOS)} photos in {dest} (licenses: {dest / 'LICENSES.tsv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
