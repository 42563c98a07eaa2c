#!/usr/bin/env bash
# The one-call GPU benchmark (see docs/gpu.md). On the GPU machine, from the repository root, after
# `python benchmarks/gpu/pack.py ...` filled .gpu_carry/ on a machine with PyPI:
#   bash benchmarks/gpu/run.sh
# It installs the carried wheels, runs the GPU tests (the Triton grid against the torch grid on CUDA; tinycudann's
# self-check where tinycudann is installed), times the grid backends forward/backward on the same points, then trains
# and renders jean once per backend in $BACKENDS, side by side: torch, Triton, and tinycudann only if the machine already
# has it and it passed its self-check. Nothing is compiled here beyond what Triton compiles itself; no tinycudann is
# built. JSON + frames go to $OUT. MOUTH_ITERATIONS=N adds issue 13's mouth target: jean and nerfacto trained N
# iterations each on the carried clip, held-out mouth PSNR side by side (mouth_target.json).
# DRY_RUN=1 runs the same logic with tiny settings and no install (the CPU test suite does this).
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=${CARRY:-.gpu_carry}
OUT=${OUT:-/tmp/jean_gpu_out}
BACKENDS=${BACKENDS-"torch triton tcnn"}  # BACKENDS="": no backend runs (e.g. the mouth target alone)
TRAIN_SECONDS=${TRAIN_SECONDS:-600}   # per backend; held-out PSNR at 2, 5 and 10 minutes by default
EVAL_AT=${EVAL_AT:-"120 300 600"}
DRY_RUN=${DRY_RUN:-0}
# Issue 13's mouth target: jean (GPU method) and nerfacto, same data and iterations, held-out mouth PSNR (0: skipped).
MOUTH_ITERATIONS=${MOUTH_ITERATIONS:-0}
MOUTH_EVAL_FRAMES=${MOUTH_EVAL_FRAMES:-20}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }

EXTRA=()
GRID_ARGS=()
if [ "$DRY_RUN" = 1 ]; then
  EXTRA=(--dry-run --render-size 16 --render-frames 2 --grid-resolution 8 --occupancy-codes 1 --eval-frames 1)
  GRID_ARGS=(--points 2048 --levels 4 --log2-hashmap-size 12 --warmup 1 --repeats 2)
  TRAIN_SECONDS=3; EVAL_AT="1"
  [ "$MOUTH_ITERATIONS" = 0 ] || { MOUTH_ITERATIONS=2; MOUTH_EVAL_FRAMES=1; }
else
  log "installing carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$CARRY"/wheels/*.whl \
    || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY_RUN" != 1 ]; then
  log "GPU tests"
  $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_hash_grid.py tests/test_triton_grid.py \
    tests/test_fast_renderer.py > "$OUT/gpu_tests.log" 2>&1
  log "GPU tests exit $?"
fi

log "grid backends: forward and forward+backward on the same points"
$PY benchmarks/grid_benchmark.py --out "$OUT/grid_benchmark.json" "${GRID_ARGS[@]}" > "$OUT/grid_benchmark.log" 2>&1
log "grid benchmark exit $?"

for backend in $BACKENDS; do
  log "$backend grid: train ${TRAIN_SECONDS}s, render"
  $PY benchmarks/gpu/gpu_benchmark.py --data "$CARRY/data/clip" --implementation "$backend" \
    --train-seconds "$TRAIN_SECONDS" --eval-at $EVAL_AT --out "$OUT" "${EXTRA[@]}" > "$OUT/$backend.log" 2>&1
  code=$?
  # exit code 3: the backend cannot run here (its result file says why), not a failure of the benchmark
  log "$backend exit $code"
done
if [ "$MOUTH_ITERATIONS" != 0 ]; then
  log "mouth target: jean and nerfacto, $MOUTH_ITERATIONS iterations each"
  $PY benchmarks/encoder_benchmark.py "$CARRY/data/clip" --method jean --arms shipped nerfacto --no-landmarks \
    --iterations "$MOUTH_ITERATIONS" --schedule-steps "$MOUTH_ITERATIONS" --eval-frames "$MOUTH_EVAL_FRAMES" \
    --output "$OUT/mouth_target.json" \
    > "$OUT/mouth_target.log" 2>&1
  log "mouth target exit $?"
fi
$PY benchmarks/gpu/summarize.py "$OUT" | tee "$OUT/summary.txt"
# The device tool returns only a few files: logs go back as one archive, and a failing backend shows its last lines.
for backend in $BACKENDS; do
  if [ -f "$OUT/$backend.log" ] && [ ! -f "$OUT/result_$backend.json" ]; then
    echo "--- $backend.log (last lines)"; grep -v -i "warning\|^  " "$OUT/$backend.log" | tail -n 15
  fi
done
if [ -f "$OUT/mouth_target.json" ]; then
  echo "--- mouth target (held-out psnr / psnr_head / psnr_mouth per arm)"
  grep -E "^[^ ].* / (shipped|nerfacto): training|^  held out:" "$OUT/mouth_target.log"
elif [ -f "$OUT/mouth_target.log" ]; then
  echo "--- mouth_target.log (last lines)"; grep -v -i "warning\|^  " "$OUT/mouth_target.log" | tail -n 15
fi
( cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.txt 2>/dev/null ) || true
