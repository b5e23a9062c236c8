#!/usr/bin/env bash
# Compile check of the CUDA tensor-core candidate path (csrc/cuda/knn_tc.cu), which the normal
# build skips when the CUDA toolkit has no cuBLAS (as on CI's machine). Takes cuBLAS's headers
# from the `nvidia-cublas` wheel (CUDA 13 series; only include/ is unpacked, nothing is linked)
# and compiles the file for sm_90 with nvcc, the flags of the real build. Skips, saying so,
# when nvcc is absent; fails when the wheel cannot be fetched or the file does not compile.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  echo "cuda_tensor_core: nvcc not found, nothing to check"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-.venv/bin/python}
"$python" -m pip download -q --no-deps --disable-pip-version-check "nvidia-cublas>=13,<14" -d "$work/wheel"
"$python" - "$work" <<'PY'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheel = next((work / "wheel").glob("nvidia_cublas-*.whl"))
with zipfile.ZipFile(wheel) as z:
    heads = [n for n in z.namelist() if "/include/" in n and n.endswith(".h")]
    z.extractall(work / "unpacked", members=heads)
print(f"cuda_tensor_core: {len(heads)} cuBLAS headers from {wheel.name}")
PY
include=$(dirname "$(find "$work/unpacked" -name cublas_v2.h | head -1)")
nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -DLAYERKNN_WITH_CUBLAS=1 -Icsrc -I"$include" \
  -c csrc/cuda/knn_tc.cu -o "$work/knn_tc.o"
echo "ok      csrc/cuda/knn_tc.cu (sm_90, with cuBLAS $(basename "$(dirname "$include")"))"
