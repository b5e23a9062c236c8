#!/usr/bin/env bash
# One-command check of layerknn's CUDA engine on a machine with a GPU (run from anywhere):
#   bash bench/gpu_check.sh
# Builds and installs layerknn with LAYERKNN_CUDA=ON (no package registry needed: torch, cmake,
# ninja, pybind11 and scikit-build-core must already be installed), then runs the GPU tests, the
# device-parametrised engine tests, a GPU-vs-CPU check on fresh random inputs and the benchmark
# (appends to bench/RESULTS.md), and finally the CPU suite if time allows. Every step runs even if
# an earlier test step fails (device time is scarce); the script exits non-zero if any failed.
# Logs and results also go to $OUT when that variable is set. Target: < 8 minutes on an H100
# (give the device tool timeout_s=600; the log in $OUT survives a timeout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${OUT:-$ROOT/build/gpu_check}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
PY="${PYTHON:-python}"
START=$(date +%s)
FAILED=()

banner() { printf '\n===== %s  [t=%ss] =====\n' "$1" "$(( $(date +%s) - START ))"; }

# step NAME TIMEOUT_SECONDS COMMAND...: run, record failure, keep going.
step() {
  local name="$1" limit="$2"
  shift 2
  banner "$name"
  if timeout "$limit" "$@"; then
    echo "----- $name: OK"
  else
    local rc=$?
    echo "!!!!! $name: FAILED (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"
    FAILED+=("$name")
  fi
}

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"  # CMake finds nvcc through PATH
fi

banner "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| torch sees GPU:', torch.cuda.is_available())"
command -v nvcc >/dev/null && nvcc --version | tail -1 || echo "nvcc not on PATH (cmake may still find it)"
nproc

banner "build + install (LAYERKNN_CUDA=ON)"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if ! LAYERKNN_CUDA=ON PIP_NO_INDEX=1 "$PY" -m pip install --no-build-isolation --no-deps -v . \
    > "$DEST/build.log" 2>&1; then
  tail -n 60 "$DEST/build.log"
  echo "!!!!! BUILD FAILED (full log: $DEST/build.log)"
  exit 1
fi
grep -E "CUDA engine|Build files|Successfully installed" "$DEST/build.log" || true
echo "build took $(( $(date +%s) - START ))s"

# Run from a neutral directory so `import layerknn` is the installed package, not python/.
"$PY" - <<'PYEOF'
import os, sys
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/python")]
import layerknn
print("layerknn from", os.path.dirname(layerknn.__file__))
print("built_with_cuda:", layerknn.built_with_cuda(), "| device count:", layerknn._core.cuda_device_count(),
      "| cuda_available:", layerknn.cuda_available(), "| max k:", layerknn._core.cuda_max_k())
assert layerknn.built_with_cuda(), "the installed layerknn has no CUDA engine"
assert layerknn.cuda_available(), "layerknn sees no usable GPU"
PYEOF

step "GPU tests (pytest -m gpu)" 180 "$PY" -m pytest -q -m gpu tests/ -p no:cacheprovider
step "GPU vs CPU on fresh random inputs" 120 "$PY" bench/bench_knn_gpu.py --check
step "benchmark (G1, G2, G3, overlap mega matrix)" 240 "$PY" bench/bench_knn_gpu.py
cp bench/RESULTS.md "$DEST/RESULTS.md" 2>/dev/null || true
step "engine tests on cpu+cuda (test_knn, test_overlap)" 150 \
  "$PY" -m pytest -q tests/test_knn.py tests/test_overlap.py -p no:cacheprovider

ELAPSED=$(( $(date +%s) - START ))
if (( ELAPSED < 380 )); then
  step "whole test suite (time permitting)" $(( 480 - ELAPSED )) \
    "$PY" -m pytest -q tests/ -m "not models" -p no:cacheprovider
else
  banner "whole test suite skipped (${ELAPSED}s used)"
fi

banner "summary"
if (( ${#FAILED[@]} )); then
  printf 'FAILED: %s\n' "${FAILED[@]}"
  echo "GPU CHECK FAILED after $(( $(date +%s) - START ))s; log: $LOG"
  exit 1
fi
echo "GPU CHECK PASSED after $(( $(date +%s) - START ))s; log: $LOG; table appended to bench/RESULTS.md"
