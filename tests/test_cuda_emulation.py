"""Runs the CUDA kernels on the CPU: csrc/cuda/emulation compiles the real kernel headers with g++
against a stand-in for the CUDA runtime (one fiber per CUDA thread, warp intrinsics as 32-thread
barriers, divergence deadlocks detected) and checks them bit for bit against sequential
references: fused distance + top-k for every metric and K bucket, ties, duplicates, odd sizes,
database splits + merge, cosine norms and the overlap kernels, then the host drivers
(split choice, layer chunking under a small memory budget, argument errors) and their launch
plumbing (LAYERKNN_CUDA_SYNC=1 synchronising every launch, a planted kernel fault raised at the
call with temporaries freed, the plain-cudaMalloc fallback, size limits refused before any launch).
This is how the GPU code is tested on machines without a GPU (about 30 s of CPU time).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "emulation" / "emulate_kernels.cpp"


def _compiler() -> str | None:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_cuda_kernels_under_cpu_emulation(tmp_path):
    cxx = _compiler()
    if cxx is None or not SOURCE.exists():
        pytest.skip("needs a C++20 compiler and csrc/cuda/emulation")
    exe = tmp_path / "emulate_kernels"
    # The kernel tests plus the real host drivers (compiled as C++ against the emulator).
    drivers = sorted(str(p) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    build = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas",
         f"-I{ROOT / 'csrc' / 'cuda' / 'emulation'}", f"-I{ROOT / 'csrc'}",
         "-DLAYERKNN_CUDA_EMULATION", str(SOURCE), "-x", "c++", *drivers, "-o", str(exe)],
        capture_output=True, text=True,
    )
    if build.returncode != 0 and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("the C++ standard library lacks <barrier> (C++20)")
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
