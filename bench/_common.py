"""Shared helpers for the standalone benchmark scripts: a clean BLAS environment, timing, and
appending result tables to bench/RESULTS.md with the machine, date and commit."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_SLOWING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# LAYERKNN_BENCH_ISA=avx2 runs every engine as on an AVX2-only CPU: layerknn's tables and the
# rivals' libraries (torch's kernels, oneDNN, MKL, OpenBLAS as in numpy and FAISS, FAISS's own
# code), so an AVX-512 machine can stand in for the AVX2 machines users own.
_AVX2_EVERYWHERE = {
    "LAYERKNN_CPU_SIMD": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell", "FAISS_OPT_LEVEL": "avx2",
}


def reexec_without_blas_throttles() -> None:
    """Restart this script without the variables that slow OpenBLAS here (benchmarks only), or
    with every library capped at AVX2 under LAYERKNN_BENCH_ISA=avx2."""
    if os.environ.get("LAYERKNN_BENCH_ISA") == "avx2":
        if any(os.environ.get(k) != v for k, v in _AVX2_EVERYWHERE.items()):
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_AVX2_EVERYWHERE})
        return
    if any(v in os.environ for v in _SLOWING_VARS):
        env = {k: v for k, v in os.environ.items() if k not in _SLOWING_VARS}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def isa_note() -> str:
    """How the engines' instruction sets were capped for this run (for result titles)."""
    if os.environ.get("LAYERKNN_BENCH_ISA") == "avx2":
        return "; every engine capped at AVX2 (LAYERKNN_BENCH_ISA=avx2: layerknn, torch, oneDNN, OpenBLAS, FAISS)"
    if os.environ.get("LAYERKNN_CPU_SIMD", "auto") != "auto":
        return f"; layerknn capped at LAYERKNN_CPU_SIMD={os.environ['LAYERKNN_CPU_SIMD']}, rivals not"
    return ""


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, text=True,
            stderr=subprocess.DEVNULL,
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_results(title: str, table: str, threads: int | None = None) -> None:
    """Append a titled markdown table with provenance to bench/RESULTS.md and print it."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = f"{cpu_name()}, {os.cpu_count()} cores" + (f", {threads} threads" if threads else "")
    block = f"\n## {title}\n\n{stamp} · commit {commit()} · {where}\n\n{table}\n"
    print(block)
    with RESULTS.open("a") as f:
        f.write(block)


def faiss_knn(x, k: int):
    """The FAISS rival: one IndexFlatIP per layer over L2-normalised rows, k+1 searched, the row itself dropped."""
    import faiss
    import numpy as np

    L, n, d = x.shape
    out = np.empty((L, n, k), dtype=np.int64)
    for layer in range(L):
        xl = np.ascontiguousarray(x[layer])
        xl = xl / np.linalg.norm(xl, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(d)
        index.add(xl)
        _, found = index.search(xl, k + 1)
        not_self = found != np.arange(n)[:, None]
        not_self[not_self.all(axis=1), -1] = False  # self absent: drop the last instead
        out[layer] = found[not_self].reshape(n, k)
    return out


def drifting_neighbours(rng, layers: int, n: int, k: int):
    """Neighbour lists of layers that drift slowly (adjacent layers overlap strongly), as in real models."""
    import numpy as np

    import layerknn

    x = rng.standard_normal((n, 64)).astype(np.float32)
    acts = []
    for _ in range(layers):
        x = x + 0.35 * rng.standard_normal(x.shape).astype(np.float32)
        acts.append(x.copy())
    return layerknn.knn(np.stack(acts), k).indices
