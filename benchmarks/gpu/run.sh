#!/usr/bin/env bash
# The one-call GPU benchmark (see docs/gpu.md). On the GPU machine, from the repository root, after
# `python benchmarks/gpu/pack.py ...` filled .gpu_carry/ on a machine with PyPI:
#   bash benchmarks/gpu/run.sh
# It installs the carried wheels, builds tiny-cuda-nn's torch bindings in the background while the torch-grid path
# trains and renders, runs the GPU tests, then trains and renders with the tcnn path, and writes JSON + frames to $OUT.
# DRY_RUN=1 runs the same logic with tiny settings and no install/build (the CPU test suite does this).
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=${CARRY:-.gpu_carry}
OUT=${OUT:-/tmp/jean_gpu_out}
TRAIN_SECONDS=${TRAIN_SECONDS:-150}
EVAL_AT=${EVAL_AT:-"60 120"}
TORCH_TRAIN_SECONDS=${TORCH_TRAIN_SECONDS:-$TRAIN_SECONDS}
DRY_RUN=${DRY_RUN:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }

EXTRA=()
if [ "$DRY_RUN" = 1 ]; then
  EXTRA=(--dry-run --render-size 16 --render-frames 2 --grid-resolution 8 --occupancy-codes 1 --eval-frames 1)
  TRAIN_SECONDS=3; TORCH_TRAIN_SECONDS=3; EVAL_AT="1"
else
  log "installing carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$CARRY"/wheels/*.whl \
    || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

BUILD_PID=""
if [ "$DRY_RUN" != 1 ] && [ -d "$CARRY/tcnn/bindings/torch" ]; then
  log "building tiny-cuda-nn torch bindings (encodings only, sm_90) in the background"
  BUILD_START=$(date +%s)
  # build_ext --inplace copies the extension into tinycudann_bindings/, which the source tree does not hold.
  ( cd "$CARRY/tcnn/bindings/torch" && mkdir -p tinycudann_bindings && TCNN_CUDA_ARCHITECTURES=${TCNN_CUDA_ARCHITECTURES:-90} MAX_JOBS=${MAX_JOBS:-10} \
      $PY setup.py --no-networks build_ext --inplace > "$OUT/tcnn_build.log" 2>&1; echo $? > "$OUT/tcnn_build.rc" ) &
  BUILD_PID=$!
fi

log "torch-grid path: train ${TORCH_TRAIN_SECONDS}s, render"
$PY benchmarks/gpu/gpu_benchmark.py --data "$CARRY/data/clip" --implementation torch \
  --train-seconds "$TORCH_TRAIN_SECONDS" --eval-at $EVAL_AT --out "$OUT" "${EXTRA[@]}" > "$OUT/torch.log" 2>&1
log "torch path exit $?"

if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID"
  echo $(( $(date +%s) - BUILD_START )) > "$OUT/tcnn_build_seconds.txt"
  log "tcnn build exit $(cat "$OUT/tcnn_build.rc") after $(cat "$OUT/tcnn_build_seconds.txt") s"
  if [ "$(cat "$OUT/tcnn_build.rc")" = 0 ]; then
    export PYTHONPATH="$PWD/$CARRY/tcnn/bindings/torch:$PYTHONPATH"
  else
    # A failed build leaves a package that raises on import, and nerfstudio imports it when it finds it.
    grep -m 5 -i "error" "$OUT/tcnn_build.log" | tee -a "$OUT/run.log"
  fi
  log "GPU tests"
  $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_hash_grid.py tests/test_fast_renderer.py > "$OUT/gpu_tests.log" 2>&1
  log "GPU tests exit $?"
  log "tcnn path: train ${TRAIN_SECONDS}s, render"
  $PY benchmarks/gpu/gpu_benchmark.py --data "$CARRY/data/clip" --implementation tcnn \
    --train-seconds "$TRAIN_SECONDS" --eval-at $EVAL_AT --out "$OUT" "${EXTRA[@]}" > "$OUT/tcnn.log" 2>&1
  log "tcnn path exit $?"
fi
$PY benchmarks/gpu/summarize.py "$OUT" | tee "$OUT/summary.txt"
# The device tool returns only a few files: logs go back as one archive, and a failing path shows its last lines here.
for path in torch tcnn; do
  if [ -f "$OUT/$path.log" ] && [ ! -f "$OUT/result_$path.json" ]; then
    echo "--- $path.log (last lines)"; grep -v -i "warning\|^  " "$OUT/$path.log" | tail -n 15
  fi
done
( cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.txt ./*.rc 2>/dev/null ) || true

