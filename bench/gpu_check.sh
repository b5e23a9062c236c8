#!/usr/bin/env bash
# One-command check of layerknn's CUDA engine on a machine with a GPU (run from anywhere):
#   bash bench/gpu_check.sh            # on the GPU machine: build, GPU tests, measurements, bench
#   bash bench/gpu_check.sh --dry-run  # here, without a GPU: every Python step on the CPU, tiny sizes
# No package registry is needed: python3 must already hold torch, numpy, pytest, cmake, ninja,
# pybind11 and scikit-build-core. layerknn is built for sm_90 only (GPU_ARCH, default 90-real)
# with --no-build-isolation into a --target folder put on PYTHONPATH (works under a plain python3
# and inside a venv, where `pip install --user` is refused). Then, each step under its own
# timeout and all within a total budget (GPU_CHECK_BUDGET seconds, default 470, build included):
# the explicit GPU test files with CUDA_LAUNCH_BLOCKING=1 (never the whole suite), GPU-vs-CPU
# identity rates of both candidate paths (LAYERKNN_CUDA_KERNEL=fp32 SIMT lists, tc tensor-core
# GEMM tiles when cuBLAS was found), cosine candidates per row inside each precision's window,
# per-phase kernel times, TFLOP/s and torch's bmm ceilings (bench/gpu_check.py), the
# GPU-vs-CPU check and the G1-G3 + mega-matrix benchmark (bench/bench_knn_gpu.py). A failing step
# does not stop the next. Everything lands in $OUT (or build/gpu_check): gpu_check.log,
# build.log, summary.json (one record per step), gpu_check.json, bench_knn_gpu.{md,json}.
# Give the device tool timeout_s=600; the files in $OUT survive a timeout.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" || "${GPU_CHECK_DRY_RUN:-0}" == "1" ]]; then DRY=1; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
if (( DRY )); then DEST="${OUT:-$ROOT/build/gpu_check_dry}"; else DEST="${OUT:-$ROOT/build/gpu_check}"; fi
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-470}"
WORK="$(mktemp -d)"
STEPS="$WORK/steps.tsv"  # name, status, rc, seconds, last line of output
: > "$STEPS"
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - START )); }
banner() { printf '\n===== %s  [t=%ss] =====\n' "$1" "$(elapsed)"; }

# step NAME LIMIT COMMAND...: run under min(LIMIT, what is left of the budget); record the result.
# pytest's "no tests collected" (rc 5) counts as success only in a dry run.
step() {
  local name="$1" limit="$2" left rc status t0 out
  shift 2
  left=$(( BUDGET - $(elapsed) ))
  (( limit > left )) && limit=$left
  banner "$name (limit ${limit}s)"
  if (( limit < 15 )); then
    echo "----- $name: SKIPPED (budget spent)"
    printf '%s\tskipped\t-1\t0\t%s\n' "$name" "budget spent" >> "$STEPS"
    return 0
  fi
  out="$WORK/step.out"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > >(tee "$out") 2>&1
  rc=$?
  sleep 0.2  # let tee finish
  if (( rc == 0 )) || (( DRY && rc == 5 )); then
    status=ok
  elif (( rc == 124 || rc == 137 )); then
    status=timeout
  else
    status=failed
  fi
  echo "----- $name: $status (exit $rc, $(( $(date +%s) - t0 ))s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" \
    "$(grep -v '^\s*$' "$out" | tail -n 1 | tr '\t' ' ' | cut -c1-300)" >> "$STEPS"
}

# summary.json from the step records (plain python, no third-party module).
write_summary() {
  "$PY" - "$STEPS" "$DEST/summary.json" "$DRY" "$(elapsed)" <<'PYEOF'
import json, sys
steps_file, out, dry, seconds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
steps = []
for line in open(steps_file, encoding="utf-8", errors="replace"):
    name, status, rc, secs, last = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(secs), "last_line": last})
ok = all(s["status"] in ("ok", "skipped") for s in steps)
json.dump({"passed": ok, "dry_run": dry, "seconds": seconds, "steps": steps}, open(out, "w"), indent=2)
print(json.dumps({"passed": ok, "failed": [s["step"] for s in steps if s["status"] not in ("ok", "skipped")],
                  "skipped": [s["step"] for s in steps if s["status"] == "skipped"]}))
PYEOF
}

finish() {
  local rc=0
  banner "summary"
  write_summary || echo "!!!!! could not write $DEST/summary.json"
  if grep -qP '\t(failed|timeout)\t' "$STEPS"; then
    echo "GPU CHECK FAILED after $(elapsed)s; log: $LOG"
    rc=1
  else
    echo "GPU CHECK PASSED after $(elapsed)s; log: $LOG"
  fi
  exec 1>&- 2>&-  # let tee write the log's last lines before the machine collects $OUT
  wait "$TEE_PID" 2>/dev/null || sleep 1
  rm -rf "$WORK"
  exit "$rc"
}

if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"  # CMake finds nvcc through PATH
fi

banner "machine$( (( DRY )) && echo ' (dry run: CPU only, tiny sizes, no build)')"
if (( ! DRY )); then
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  if command -v nvcc >/dev/null; then nvcc --version | tail -n 1; else echo "nvcc not on PATH"; fi
fi
timeout 60 "$PY" -c "import sys, torch; print('python', sys.version.split()[0], sys.executable, '| torch', \
torch.__version__, '| CUDA', torch.version.cuda, '| torch sees GPU:', torch.cuda.is_available())" || true
echo "cores: $(nproc)"

if (( DRY )); then
  # The in-tree package (with the dev-built _core) unless the caller set PYTHONPATH.
  export PYTHONPATH="${PYTHONPATH:-$ROOT/python}"
else
  SITE="$WORK/site"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  # sh -c '"$@" > log': the whole pip output goes to build.log, the step record to the main log.
  # shellcheck disable=SC2016  # $0 and $@ are meant for the inner sh
  step "build + install (LAYERKNN_CUDA=ON, CUDA arch ${GPU_ARCH:-90-real})" 300 \
    sh -c '"$@" > "$0" 2>&1' "$DEST/build.log" \
    env LAYERKNN_CUDA=ON PIP_NO_INDEX=1 "$PY" -m pip install --no-build-isolation --no-deps \
      --no-index --no-compile --target "$SITE" -v \
      -Ccmake.define.LAYERKNN_CUDA=ON \
      -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${GPU_ARCH:-90-real}" \
      -Cbuild-dir="$WORK/build" .
  if ! grep -qP '^build.*\tok\t' "$STEPS"; then
    tail -n 60 "$DEST/build.log"
    echo "!!!!! BUILD FAILED (full log: $DEST/build.log)"
    finish
  fi
  grep -E "CUDA engine|cuBLAS|nvcc|Successfully installed" "$DEST/build.log" | head -n 6 || true
  export PYTHONPATH="$SITE"
fi

step "import check" 60 "$PY" -c "
import os, layerknn
print('layerknn from', os.path.dirname(layerknn.__file__))
print('built_with_cuda:', layerknn.built_with_cuda(), '| tensor-core path:', layerknn._core.cuda_tensor_core_built(),
      '| devices:', layerknn._core.cuda_device_count(),
      '| cuda_available:', layerknn.cuda_available(), '| max k:', layerknn._core.cuda_max_k())
assert $DRY or layerknn.built_with_cuda(), 'the installed layerknn has no CUDA engine'
assert $DRY or layerknn.cuda_available(), 'layerknn sees no usable GPU'
"

# Explicit files only: an import error elsewhere in tests/ cannot stop these.
DRYARG=()
if (( DRY )); then DRYARG=(--dry-run); fi
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
step "GPU tests (tests/test_gpu.py, CUDA_LAUNCH_BLOCKING=1)" 120 \
  env CUDA_LAUNCH_BLOCKING=1 "${PYTEST[@]}" tests/test_gpu.py
step "measurements (identity per path, candidates per row, phase times, TFLOP/s, bmm ceilings)" 200 \
  "$PY" bench/gpu_check.py --json "$DEST/gpu_check.json" "${DRYARG[@]}"
step "engine tests on cuda (tests/test_knn.py -k cuda)" 90 \
  env CUDA_LAUNCH_BLOCKING=1 "${PYTEST[@]}" tests/test_knn.py -k cuda
step "engine tests on cuda (tests/test_overlap.py -k cuda)" 60 \
  env CUDA_LAUNCH_BLOCKING=1 "${PYTEST[@]}" tests/test_overlap.py -k cuda
step "GPU vs CPU on fresh random inputs (bench_knn_gpu.py --check)" 60 \
  "$PY" bench/bench_knn_gpu.py --check "${DRYARG[@]}"
step "benchmark (G1, G2, G3, overlap mega matrix)" 240 \
  env OUT="$DEST" "$PY" bench/bench_knn_gpu.py --repeats 3 --no-append "${DRYARG[@]}"

finish
