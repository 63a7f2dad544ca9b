#!/usr/bin/env bash
# Copy the 200 *training* photographs of BSDS500 (Berkeley Segmentation Data Set, Arbelaez et al., TPAMI 2011) into a
# folder for `udvd prepare-data`, with their licence line in LICENSES.tsv.
#
#   scripts/fetch_bsds_train.sh [DEST=data/photos/bsds500-train] [CHECKOUT]
#
# CHECKOUT: a checkout of github.com/BIDS/BSDS500 (a mirror of the January 2013 release); cloned (shallow) into
# data/bsds500-work when not given. Only BSDS500/data/images/train is read: its val and test images are BSD100 /
# BSD68 / CBSD68, standard test sets, and must never be trained on.
set -euo pipefail
DEST=${1:-data/photos/bsds500-train}
CHECKOUT=${2:-}
if [ -z "$CHECKOUT" ]; then
    CHECKOUT=data/bsds500-work
    [ -d "$CHECKOUT/.git" ] || git clone --depth 1 https://github.com/BIDS/BSDS500 "$CHECKOUT"
fi
SRC="$CHECKOUT/BSDS500/data/images/train"
[ -d "$SRC" ] || { echo "fetch_bsds_train: $SRC not found" >&2; exit 1; }
mkdir -p "$DEST"
printf 'file\tsource\tlicense\n' > "$DEST/LICENSES.tsv"
count=0
for f in "$SRC"/*.jpg; do
    name="bsds500-train__$(basename "$f")"
    cp "$f" "$DEST/$name"
    printf '%s\t%s\t%s\n' "$name" "BSDS500 train (github.com/BIDS/BSDS500)" \
        "research use with citation of Arbelaez, Maire, Fowlkes, Malik, TPAMI 33(5) 2011" >> "$DEST/LICENSES.tsv"
    count=$((count + 1))
done
[ "$count" -eq 200 ] || { echo "fetch_bsds_train: expected the 200 training images, found $count" >&2; exit 1; }
echo "fetch_bsds_train: $count photos in $DEST (licenses: $DEST/LICENSES.tsv)"
