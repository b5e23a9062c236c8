"""Builds the CPU emulation of the CUDA engine (csrc/cuda/emulation) once per test session.

The real CUDA host drivers (csrc/cuda/*.cu, compiled as C++ against the stand-ins for the CUDA
runtime, cuda_fp16.h and cuBLAS in csrc/cuda/emulation) are compiled to objects once and linked
into each emulation program a test asks for. Not a test module: helpers for test_cuda_*.py.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "csrc" / "cuda" / "emulation"
# -U_FORTIFY_SOURCE: the emulator's fibers _longjmp between stacks, which a fortified longjmp refuses.
FLAGS = ["-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas", "-U_FORTIFY_SOURCE", f"-I{EMULATION}",
         f"-I{ROOT / 'csrc'}", "-DLAYERKNN_CUDA_EMULATION"]


def compiler() -> str | None:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="layerknn_emu_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 and "barrier" in done.stderr and "No such file" in done.stderr:
        pytest.skip("the C++ standard library lacks <barrier> (C++20)")
    assert done.returncode == 0, done.stderr[-4000:]


@functools.cache
def driver_objects() -> tuple[str, ...]:
    """The host drivers csrc/cuda/*.cu as emulation objects (compiled in parallel)."""
    cxx = compiler()
    if cxx is None:
        pytest.skip("needs a C++20 compiler")
    out = _workdir() / "drivers"
    out.mkdir(exist_ok=True)
    sources = sorted(str(p) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    objects = [str(out / (Path(src).stem + ".o")) for src in sources]
    procs = [subprocess.Popen([cxx, *FLAGS, "-c", "-x", "c++", src, "-o", obj], stderr=subprocess.PIPE, text=True)
             for src, obj in zip(sources, objects)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0 and "barrier" in err and "No such file" in err:
            pytest.skip("the C++ standard library lacks <barrier> (C++20)")
        assert p.returncode == 0, err[-4000:]
    return tuple(objects)


@functools.cache
def program(name: str, with_drivers: bool = True) -> Path:
    """csrc/cuda/emulation/<name>.cpp built into an executable (linked with the drivers)."""
    cxx = compiler()
    if cxx is None:
        pytest.skip("needs a C++20 compiler")
    exe = _workdir() / name
    _run([cxx, *FLAGS, str(EMULATION / f"{name}.cpp"), *(driver_objects() if with_drivers else ()), "-o", str(exe)])
    return exe
