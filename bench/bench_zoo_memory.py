"""Peak memory and time of a zoo of many array "models" (issue target: 50 x 26 layers, n=2048, d=64, k=10).

Builds ``--models`` random activation stacks of ``--layers`` blocks (generated one at a time
and turned into neighbour lists by ``layerknn.zoo`` itself), runs the zoo with bootstrap
intervals, and prints the process's peak RSS next to the O(models x n x k) lower bound of
the neighbour lists it must hold, plus the wall time by phase.  Appends a row to
bench/RESULTS.md with ``--record``.

    python bench/bench_zoo_memory.py                    # the issue's size
    python bench/bench_zoo_memory.py --models 8 --n 512  # a quick look
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from _common import append_results, cpu_name

import layerknn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--layers", type=int, default=26)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # Neighbour lists from activations generated one model at a time, so the inputs never
    # all sit in memory: what is measured is the zoo's own footprint.
    start = time.perf_counter()
    neighbours = []
    for _ in range(args.models):
        acts = rng.standard_normal((args.layers + 1, args.n, args.d), dtype=np.float32)
        neighbours.append(layerknn.knn(acts, k=args.k + 1))
        del acts
    search = time.perf_counter() - start
    start = time.perf_counter()
    z = layerknn.zoo(neighbours, k=args.k, bootstrap=args.bootstrap, permutations=0, progress=True)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lists_mb = args.models * (args.layers + 1) * args.n * (args.k + 1) * 8 / 2**20
    pair_counts_mb = (args.layers + 1) ** 2 * args.n * 2 / 2**20
    old_counts_mb = (args.models * (args.layers + 1)) ** 2 * args.n * 2 / 2**20
    print(cpu_name())
    print(f"zoo of {args.models} models x {args.layers + 1} layers, n={args.n}, d={args.d}, k={args.k}, "
          f"bootstrap={args.bootstrap}: {len(z.pair_stats)} pairs")
    print(f"  k-NN of all models {search:.1f} s; zoo {elapsed:.1f} s (phases: {z.meta['seconds']})")
    print(f"  peak RSS {peak_mb:.0f} MiB; neighbour lists (indices + scores) {lists_mb:.0f} MiB; one pair's counts "
          f"{pair_counts_mb:.1f} MiB; all pairs' counts at once (the old design) would be {old_counts_mb:.0f} MiB")
    if args.record:
        append_results("Zoo memory (bench_zoo_memory.py)", "\n".join([
            "| zoo | peak RSS | time | all pairs' counts at once (old design) |",
            "|---|---|---|---|",
            f"| {args.models} models x {args.layers + 1} layers, n={args.n}, d={args.d}, k={args.k}, "
            f"bootstrap {args.bootstrap} | {peak_mb:.0f} MiB | {elapsed:.1f} s zoo + {search:.1f} s k-NN | "
            f"{old_counts_mb:.0f} MiB |"]))


if __name__ == "__main__":
    main()
