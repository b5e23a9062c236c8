"""Runs the CUDA kernels on the CPU: csrc/cuda/emulation compiles the real kernel headers with g++
against a stand-in for the CUDA runtime (one fiber per CUDA thread, warp intrinsics as 32-thread
barriers, divergence deadlocks detected) and checks them bit for bit against sequential
references: fused distance + top-k for every metric and K bucket, ties, duplicates, odd sizes,
database splits + merge, cosine norms and the overlap kernels, then the host drivers
(split choice, layer chunking under a small memory budget, exact re-rank, argument errors) and their launch
plumbing (LAYERKNN_CUDA_SYNC=1 synchronising every launch, a planted kernel fault raised at the
call with temporaries freed, the plain-cudaMalloc fallback, size limits refused before any launch).
This is how the GPU code is tested on machines without a GPU (about a minute of CPU time).
"""

from __future__ import annotations

import subprocess

import pytest

from emulation import program


@pytest.mark.slow
def test_cuda_kernels_under_cpu_emulation():
    exe = program("emulate_kernels")  # the kernel tests plus the real host drivers
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
