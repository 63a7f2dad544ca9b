#!/usr/bin/env bash
# Copy the 53 images of the T91 training set (Yang, Wright, Huang, Ma, "Image super-resolution via sparse
# representation", IEEE TIP 2010) that github.com/wensongzhang/Project keeps in Train/ into a folder for
# `udvd prepare-data`, as PNG, with their licence line in LICENSES.tsv.
#
#   scripts/fetch_t91.sh [DEST=data/photos/t91] [CHECKOUT]
#
# CHECKOUT: a checkout of that repository; cloned (shallow) into data/t91-work when not given. Only Train/ is read:
# the repository's Test/ holds Set5 / Set14, standard test sets that must never be trained on.
set -euo pipefail
DEST=${1:-data/photos/t91}
CHECKOUT=${2:-}
if [ -z "$CHECKOUT" ]; then
    CHECKOUT=data/t91-work
    [ -d "$CHECKOUT/.git" ] || git clone --depth 1 https://github.com/wensongzhang/Project "$CHECKOUT"
fi
[ -d "$CHECKOUT/Train" ] || { echo "fetch_t91: $CHECKOUT/Train not found" >&2; exit 1; }
mkdir -p "$DEST"
python3 - "$CHECKOUT/Train" "$DEST" <<'PY'
import sys
from pathlib import Path
from PIL import Image
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
rows = ["file\tsource\tlicense"]
for path in sorted(src.glob("*.bmp")):
    name = f"t91__{path.stem}.png"
    Image.open(path).convert("RGB").save(dest / name)
    rows.append(f"{name}\tT91 training set (github.com/wensongzhang/Project Train/{path.name})\t"
                "research use with citation of Yang, Wright, Huang, Ma, IEEE TIP 19(11) 2010")
(dest / "LICENSES.tsv").write_text("\n".join(rows) + "\n")
print(f"fetch_t91: {len(rows) - 1} photos in {dest} (licenses: {dest / 'LICENSES.tsv'})")
PY
