#!/usr/bin/env bash
# Train the paper-size models on a lent GPU, one call of under 10 minutes at a time (an H200 session's per-call
# limit), resuming from the run left on the machine by the previous call. Each call stops cleanly after MINUTES
# (checkpoint + final/), evaluates final/ on the GPU over the blur x noise grid and leaves in $OUT what a commit
# needs: the float16 weights (one file under 16 MiB), the run's log.csv and settings.json, the eval JSON.
#
#   TASK=x2 STEPS=100000 MINUTES=8 bash scripts/gpu_train.sh   # continue udvd-x2 (new cosine from its weights)
#   TASK=x3 STEPS=40000 MINUTES=8 bash scripts/gpu_train.sh    # udvd-x3 from the udvd-x2 body; again to resume
#
# Photos: data/photos (scripts/fetch_debian_photos.sh; carry the folder to the GPU machine). The crops are
# prepared once per machine in $WORK. STEPS fixes the cosine schedule of a new run (a resumed run keeps it unless
# STEPS changes); the udvd-x2 run measured ~39 steps/s on an H200 (batch 16, LR patch 64, bf16).
set -eu
cd "$(dirname "$0")/.."
TASK=${TASK:?TASK=x2, x3 or x4}
STEPS=${STEPS:?STEPS: total steps of the run}
MINUTES=${MINUTES:-8}
WORK=${WORK:-/tmp/udvd-train}
OUT=${OUT:-$WORK/out}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}              # more settings for a new run, e.g. EXTRA="--batch 2 --patch 16" for a CPU dry run
EVAL_IMAGES=${EVAL_IMAGES:-}  # a folder of HR images (default: udvd eval's)
SCALE=${TASK#x}
RUN=$WORK/runs/$TASK
export PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$OUT"
python3 -c "import png" 2>/dev/null || python3 -m pip install -q --no-index --no-deps .whl/pypng-*.whl  # not in the image
python3 -c "import udvd_triton" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e .
udvd() { "$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))')/udvd" "$@"; }  # PATH may lack it

if [ ! -f "$WORK/prepared/manifest.json" ]; then
    udvd prepare-data data/photos "$WORK/prepared" --crop 192 --stride 144 --max-side 2040 --val 4 --quiet
fi
common=(--out "$RUN" --max-minutes "$MINUTES" --steps "$STEPS" --device "$DEVICE" --quiet)
if [ -f "$RUN/checkpoint.json" ]; then
    udvd train --resume "${common[@]}"
else
    # x2 continues from the published weights at half the peak LR; x3 / x4 take its head and body, their dynamic
    # stages start as bicubic / identity filters (blur range: the scale's default). Adam's first
    # steps move every weight by about the LR, and through 1,152 trained 128-channel inputs that reshapes the new
    # stages' predicted kernels at once (a CPU trial reaching 1e-4 in 5 steps fell from bicubic's 37.8 dB to 21 dB
    # before recovering), hence the longer warm-up for x3 / x4.
    lr=1e-4
    warmup=$([ "$TASK" = x2 ] && echo 0.01 || echo 0.03)
    udvd finetune --from udvd-x2 --scale "$SCALE" --data "$WORK/prepared" --lr "$lr" --warmup "$warmup" \
        --val-every 2000 --ckpt-every 2000 --log-every 200 $EXTRA "${common[@]}"
fi

name=udvd-$TASK
sigmas=$(python3 -c "print(*[round(v * $SCALE / 2, 2) for v in (0.2, 1.2, 2.0)])")
udvd eval --model "$RUN/final" --device "$DEVICE" --sigma $sigmas --noise 0 15 50 --json "$OUT/$name.eval.json" \
    ${EVAL_IMAGES:+--images "$EVAL_IMAGES"} --overwrite --quiet
mkdir -p "$OUT/weights"
[ -f "$OUT/weights/registry.json" ] || echo '{"format_version": 1, "models": []}' > "$OUT/weights/registry.json"
python3 scripts/add_to_registry.py "$RUN/final" "$name" --dtype float16 --license MIT --weights-dir "$OUT/weights" \
    --training "$(python3 -c "import json; c = json.load(open('$RUN/settings.json')); print(json.dumps(c))")"
cp "$RUN/log.csv" "$OUT/$name.train-log.csv"
cp "$RUN/settings.json" "$OUT/$name.settings.json"
tail -3 "$RUN/log.csv"
