"""Benchmark: layerknn.calibration.permutation_null vs a naive one-overlap-call-per-shuffle loop.

Workload: neighbour lists of a 31 x 19 comparison (31 and 19 layers, n=2048 prompts, k=10),
drifting Gaussian activations as in bench_overlap.py; 1000 prompt permutations. Both methods
compute the same outputs (per-cell p-values, null mean/std, family-wise max, Spearman null) and
are checked to agree before timing. The engine-only row times the overlap calls alone on
pre-relabelled stacks: the floor for any method built on the overlap engine.
Usage: python bench/bench_calibration.py [--threads 2] [--perms 1000] [--repeats 5] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import append_results, drifting_neighbours, reexec_without_blas_throttles

reexec_without_blas_throttles()

import numpy as np  # noqa: E402

import layerknn  # noqa: E402
from layerknn import _core, calibration, stats  # noqa: E402


def naive(a, b, k, n_perm, seed, overlap):
    """One relabel + one overlap call per shuffle, the same outputs accumulated one by one."""
    observed = overlap(a, b, k)
    la, lb = a.shape[0] - 1, b.shape[0] - 1
    rng = np.random.default_rng(seed)
    exceed = np.zeros(observed.shape, dtype=np.int64)
    total, total_sq, maxima, spear = np.zeros(observed.shape), np.zeros(observed.shape), [], []
    for _ in range(n_perm):
        null = overlap(a, stats.relabel_neighbors(b, rng.permutation(a.shape[1])), k)
        exceed += null >= observed - 1e-12
        total += null - observed
        total_sq += (null - observed) ** 2
        maxima.append(null[1:, 1:].max())
        s = stats.depth_alignment_stats(null, la, lb)
        spear.append(min(np.nan_to_num(s["spearman_ab"]), np.nan_to_num(s["spearman_ba"])))
    return (1.0 + exceed) / (1.0 + n_perm), observed + total / n_perm, np.array(maxima), np.array(spear)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--perms", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-append", action="store_true", help="print the table without appending it")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    La, Lb, n, k = 31, 19, 2048, 10
    a, b = drifting_neighbours(rng, La, n, k), drifting_neighbours(rng, Lb, n, k)

    def overlap(x, y, kk):
        return layerknn.overlap(x, y, kk, num_threads=args.threads)

    res = calibration.permutation_null(a, b, k, n_perm=50, seed=1, overlap=overlap)
    p, mean, maxima, spear = naive(a, b, k, 50, 1, overlap)
    assert np.array_equal(res.p_values, p) and np.array_equal(res.max_null, maxima)
    assert np.array_equal(res.spearman_null["spearman_min"], spear)
    assert np.allclose(res.null_mean, mean, rtol=1e-12)

    chunk = 16  # engine floor: the overlap calls alone, on 16-shuffle stacks relabelled beforehand
    perms = np.stack([np.random.default_rng(2).permutation(n) for _ in range(chunk)])
    stack = np.concatenate([stats.relabel_neighbors(b, q) for q in perms])
    methods = {
        "batched": lambda: calibration.permutation_null(a, b, k, n_perm=args.perms, seed=0, overlap=overlap),
        "naive": lambda: naive(a, b, k, args.perms, 0, overlap),
        "engine": lambda: [overlap(a, stack, k) for _ in range(args.perms // chunk)],
    }
    wall, cpu = {m: [] for m in methods}, {m: [] for m in methods}
    for _ in range(args.repeats):  # interleaved, so load swings hit every method alike
        for name, fn in methods.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    scale = {"batched": 1.0, "naive": 1.0, "engine": args.perms / (chunk * (args.perms // chunk))}
    t = {m: statistics.median(wall[m]) * scale[m] for m in methods}
    c = {m: statistics.median(cpu[m]) * scale[m] for m in methods}
    t_batched = t["batched"]

    load = os.getloadavg()[0]
    labels = {"batched": "permutation_null (batched, P shuffles per overlap call)",
              "naive": "naive loop (relabel + 1 overlap call per shuffle)",
              "engine": "overlap engine alone (floor)"}
    table = (f"| method | {args.perms} permutations, wall (s) | CPU (s) | ms / permutation (wall) "
             f"| wall / batched | CPU / batched |\n|---|---:|---:|---:|---:|---:|\n")
    table += "\n".join(f"| {labels[m]} | {t[m]:.2f} | {c[m]:.2f} | {t[m] / args.perms * 1e3:.2f} | "
                       f"{t[m] / t_batched:.2f}× | {c[m] / c['batched']:.2f}× |" for m in methods)
    table += (f"\n\nShape {La}×{Lb} layers, n={n}, k={k}, drifting Gaussian activations; medians of {args.repeats} "
              f"interleaved runs; CPU = process CPU seconds (both threads); outputs checked equal on 50 shuffles "
              f"first. 1-min load average at the end: {load:.1f}.")
    title = (f"permutation null: batched vs one overlap call per shuffle (CPU, "
             f"SIMD {_core.simd_level()}, {args.threads} threads)")
    if args.no_append:
        print(f"## {title}\n\n{table}")
    else:
        append_results(title, table, args.threads)


if __name__ == "__main__":
    main()
