"""Benchmark layerknn's CPU k-NN engine against FAISS IndexFlatIP and torch bmm + topk.

Cosine k-NN (k=10, float32) of every row of every layer, at equal thread counts, on the
workloads of the issue: W1 = (L=31, n=2048, d=576) and W2 = (L=33, n=4096, d=2048) (``--quick``
shrinks them), each on two kinds of rows (``--rows``): ``lowrank`` (a shared low-rank part plus
noise, structured like pooled activations) and ``gaussian`` (isotropic, the hardest case for the
low-precision candidate windows: every score is near every other). Checks that the neighbour
lists agree with both rivals, then times each (warm-up + median of repeats), prints seconds,
speed-ups and effective GFLOP/s (2 L n^2 d per full product), measures layerknn's peak extra
memory in a fresh subprocess, and appends the table to bench/RESULTS.md.

    python bench/bench_knn_cpu.py [--quick] [--threads 2] [--repeats 3] [--rows lowrank,gaussian]

``--tile-rates`` first prints each tile kernel table's GEMM speed alone (one thread, 192 x 192
tiles, ``layerknn._core._testing.tile_gemm_rate``; the cost model weighs precisions by these
ratios) against numpy and torch sgemm of the same shape, and appends that table too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, faiss_knn, isa_note, reexec_without_blas_throttles  # noqa: E402

reexec_without_blas_throttles()

import numpy as np  # noqa: E402

WORKLOADS = {"W1": (31, 2048, 576), "W2": (33, 4096, 2048)}
QUICK = {"W1": (4, 1024, 576), "W2": (3, 2048, 2048)}
K = 10


ROWS = ("lowrank", "gaussian")


def make_activations(L: int, n: int, d: int, seed: int = 0, rows: str = "lowrank") -> np.ndarray:
    """Seeded float32 rows. ``lowrank``: a shared low-rank part per layer plus Gaussian noise, so
    the neighbourhoods have structure (as pooled LM activations do) instead of being uniform.
    ``gaussian``: isotropic standard normal rows."""
    rng = np.random.default_rng(seed)
    if rows == "gaussian":
        return rng.standard_normal((L, n, d), dtype=np.float32)
    x = np.empty((L, n, d), dtype=np.float32)
    for layer in range(L):
        base = rng.standard_normal((16, d), dtype=np.float32)
        mix = rng.standard_normal((n, 16), dtype=np.float32)
        # einsum without BLAS: numpy's OpenBLAS threads would otherwise keep spinning and
        # steal the cores from whichever engine is timed first.
        x[layer] = np.einsum("nr,rd->nd", mix, base)
        x[layer] += 2.0 * rng.standard_normal((n, d), dtype=np.float32)
    return x


def layerknn_runner(threads: int):
    try:
        import layerknn

        if hasattr(layerknn, "knn"):
            return lambda x: np.asarray(layerknn.knn(x, K, metric="cosine", num_threads=threads).indices)
    except ImportError:
        pass
    from layerknn import _core

    return lambda x: _core.knn_cpu(x, None, K, 1, True, threads)[0]


def torch_knn(x: np.ndarray) -> np.ndarray:
    """Normalise, one batched matmul per layer block, mask the diagonal, topk."""
    import torch

    t = torch.from_numpy(x)
    t = t / t.norm(dim=2, keepdim=True)
    scores = torch.bmm(t, t.transpose(1, 2))
    scores.diagonal(dim1=1, dim2=2).fill_(-float("inf"))
    return scores.topk(K, dim=2).indices.numpy()


def timed_rounds(engines: dict, x, repeats: int) -> tuple[dict, dict]:
    """Median wall seconds and last result of each engine. One warm-up call each (kept as a
    sample when a call exceeds 10 s, so the slow rivals on W2 do not dominate the run time),
    then `repeats` rounds that call every engine once, so all of them see the same machine load
    even when other work on the machine comes and goes."""
    samples = {name: [] for name in engines}
    results = {}
    for name, fn in engines.items():
        start = time.perf_counter()
        results[name] = fn(x)
        first = time.perf_counter() - start
        if first > 10:
            samples[name].append(first)
    for _ in range(repeats):
        for name, fn in engines.items():
            if len(samples[name]) >= repeats:
                continue
            start = time.perf_counter()
            results[name] = fn(x)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in samples.items()}, results


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose neighbour sets are equal."""
    a = np.sort(a.reshape(-1, K), axis=1)
    b = np.sort(b.reshape(-1, K), axis=1)
    return float((a == b).all(axis=1).mean())


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_child(name: str, quick: bool, threads: int, rows: str) -> None:
    """(In a fresh subprocess) peak RSS growth of one layerknn.knn call, minus its outputs."""
    L, n, d = (QUICK if quick else WORKLOADS)[name]
    x = make_activations(L, n, d, rows=rows)
    run = layerknn_runner(threads)
    run(x[:1, :64])  # load everything once
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _vm_kib("VmRSS") if reset else _vm_kib("VmHWM")
    run(x)
    extra = (_vm_kib("VmHWM") - before) * 1024 - L * n * K * 8  # minus indices + scores
    print(json.dumps({"extra_bytes": max(extra, 0), "input_bytes": x.nbytes, "reset": reset}))


def measure_memory(name: str, quick: bool, threads: int, rows: str) -> str:
    cmd = [sys.executable, __file__, "--memory-child", name, "--threads", str(threads), "--rows", rows]
    if quick:
        cmd.append("--quick")
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        info = json.loads(out.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError) as err:
        return f"n/a ({err.__class__.__name__})"
    pct = 100.0 * info["extra_bytes"] / info["input_bytes"]
    return f"{pct:.1f}%" + ("" if info["reset"] else " (HWM delta)")


def tile_rates(d: int = 576) -> str:
    """GFLOP/s of each tile table on offer (AMX on and off where the CPU has it) and of a plain
    single-threaded sgemm of the same 192 x 192 x d shape, as a Markdown table."""
    import torch

    from layerknn import _core

    rows = ["| table | precision | GFLOP/s (one thread, best tile) | over the fp32 tiles |", "|---|---|---|---|"]
    settings = [("auto", p) for p in _core.tile_precisions()]
    if _core.simd_level() == "avx512-amx":
        settings += [("off", p) for p in _core.tile_precisions() if p != "fp32"]
    base = None
    for amx, precision in settings:
        os.environ["LAYERKNN_CPU_AMX"] = amx
        try:
            table, gflops, _ = _core._testing.tile_gemm_rate(precision, d, 0.3)
        except ValueError:  # a precision this CPU has but LAYERKNN_CPU_SIMD rules out
            continue
        base = base or gflops
        rows.append(f"| {table} | {precision} | {gflops:.0f} | {gflops / base:.2f}x |")
    os.environ.pop("LAYERKNN_CPU_AMX", None)
    a = np.random.default_rng(0).standard_normal((192, d), dtype=np.float32)
    flops = 2.0 * 192 * 192 * d
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    ta = torch.from_numpy(a)
    from threadpoolctl import threadpool_limits  # numpy's BLAS on one thread too

    with threadpool_limits(1):
        for name, fn in (("numpy sgemm (its BLAS)", lambda: a @ a.T), ("torch sgemm", lambda: ta @ ta.T)):
            best = min(_time_once(fn) for _ in range(200))
            rows.append(f"| {name} | fp32 | {flops / best / 1e9:.0f} | {flops / best / 1e9 / base:.2f}x |")
    torch.set_num_threads(previous)
    return "\n".join(rows)


def _time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a minute)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine")
    parser.add_argument("--workloads", default="W1,W2", help="comma-separated subset of W1,W2")
    parser.add_argument("--rows", default="lowrank,gaussian",
                        help="comma-separated subset of lowrank,gaussian (the kinds of rows)")
    parser.add_argument("--tile-rates", action="store_true",
                        help="also time each tile table's GEMM alone against sgemm (one thread)")
    parser.add_argument("--no-append", action="store_true", help="print only")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        measure_memory_child(args.memory_child, args.quick, args.threads, args.rows)
        return
    kinds = args.rows.split(",")
    if any(kind not in ROWS for kind in kinds):
        parser.error(f"--rows must name kinds among {', '.join(ROWS)}, got {args.rows!r}")

    import faiss
    import torch

    from layerknn import _core

    if args.tile_rates:
        title = (f"Tile GEMM speed alone, 192 x 192 x 576 [{_core.simd_level()}{isa_note()}] against sgemm "
                 "of the same shape")
        table = tile_rates()
        print(title + "\n\n" + table, flush=True)
        if not args.no_append:
            append_results(title, table, threads=1)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    run_layerknn = layerknn_runner(args.threads)
    sizes = QUICK if args.quick else WORKLOADS
    kernel = os.environ.get("LAYERKNN_CPU_KERNEL", "auto")
    rows = [
        "| workload | rows | L, n, d | layerknn s | FAISS s | torch s | vs FAISS | vs torch "
        "| GFLOP/s layerknn / FAISS / torch | same sets as FAISS / torch | extra memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, kind in [(name, kind) for name in args.workloads.split(",") for kind in kinds]:
        L, n, d = sizes[name]
        x = make_activations(L, n, d, rows=kind)
        print(f"{name} ({kind} rows): L={L} n={n} d={d} ...", flush=True)
        times, results = timed_rounds(
            {"layerknn": run_layerknn, "faiss": lambda x: faiss_knn(x, K), "torch": torch_knn}, x, args.repeats
        )
        t_ours, t_faiss, t_torch = times["layerknn"], times["faiss"], times["torch"]
        ours, theirs_faiss, theirs_torch = results["layerknn"], results["faiss"], results["torch"]
        flops = 2.0 * L * n * n * d
        memory = measure_memory(name, args.quick, args.threads, kind)
        rows.append(
            f"| {name} | {kind} | {L}, {n}, {d} | {t_ours:.3f} | {t_faiss:.3f} | {t_torch:.3f} "
            f"| {t_faiss / t_ours:.2f}x | {t_torch / t_ours:.2f}x "
            f"| {flops / t_ours / 1e9:.0f} / {flops / t_faiss / 1e9:.0f} / {flops / t_torch / 1e9:.0f} "
            f"| {100 * agreement(ours, theirs_faiss):.2f}% / {100 * agreement(ours, theirs_torch):.2f}% "
            f"| {memory} |"
        )
        print(rows[-1], flush=True)
        del x
    load = os.getloadavg()[0]
    title = (
        f"CPU k-NN, cosine, k={K}, float32{' (quick sizes)' if args.quick else ''}: layerknn "
        f"[{_core.simd_level()}, tiles {'/'.join(_core.tile_precisions())}, "
        f"LAYERKNN_CPU_KERNEL={kernel}] vs FAISS IndexFlatIP vs torch "
        f"bmm+topk{isa_note()} (1-min load average at the end: {load:.1f})"
    )
    table = "\n".join(rows)
    if args.no_append:
        print(title + "\n\n" + table)
    else:
        append_results(title, table, threads=args.threads)


if __name__ == "__main__":
    main()
