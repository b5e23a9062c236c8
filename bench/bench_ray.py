"""Wall time of a zoo run locally vs on a local Ray cluster: 4 tiny random models x 2 prompt sets.

Builds four tiny random Hugging Face models (tests/tiny_models.py: 2 layers, 32 wide, CPU),
saves them as model folders, and runs ``layerknn.zoos`` over them on two prompt sets (all
eight (model, dataset) units in one submission) with a fresh cache each time (so every model
is loaded, extracted and searched): once with ``executor="local"`` and once with
``executor="ray"`` on a cluster of ``--workers`` CPUs.
The Ray result is checked equal to the local one bit for bit first; then each executor is
timed (median of ``--repeats`` after one warm-up; Ray's start-up is reported apart) and the
ratio printed.  Tiny models make this a measure of the executor's overhead, not of its gain:
the gain comes with models whose load and extraction take seconds to minutes.  Ray gives
each worker one thread (OMP_NUM_THREADS=1); ``--local-threads 1`` makes the local run match.

    python bench/bench_ray.py                 # 4 models x 2 datasets, 2 workers
    python bench/bench_ray.py --n 512 --record
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import append_results, cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' weight-loading bars, once per model and run
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402

import layerknn  # noqa: E402

FAMILIES = (("gpt2", 0), ("llama", 1), ("qwen2", 2), ("mistral", 3))


def prompt_sets(n: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    words = ["layer", "neighbour", "model", "prompt", "token", "vector", "depth", "cache", "ray", "node"]
    sentences = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) + f" #{i}" for i in range(n)]
    strings = ["".join(chr(int(c)) for c in rng.integers(33, 127, size=int(rng.integers(5, 40)))) for _ in range(n)]
    return {"words": sentences, "random-strings": strings}


def run(paths, datasets, executor, args):
    """One ``layerknn.zoos`` run over every dataset (all units in one submission) on a fresh cache;
    returns (seconds, zoos)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        found = layerknn.zoos(paths, datasets, k=args.k, bootstrap=args.bootstrap, permutations=args.permutations,
                              cache=cache, executor=executor)
    return time.perf_counter() - start, list(found.values())


def same(a, b) -> bool:
    if not np.array_equal(a.matrix, b.matrix):
        return False
    for key, entry in a.pair_stats.items():
        other = b.pair_stats[key]
        if not np.array_equal(entry["calibration"].p_values, other["calibration"].p_values):
            return False
        if not np.array_equal(entry["ci"]["matrix_low"], other["ci"]["matrix_low"]):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="prompts per dataset")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--local-threads", type=int, default=None,
                        help="torch threads of the local run (default: torch's own; each Ray worker uses 1)")
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()

    import ray
    import torch

    if args.local_threads:
        torch.set_num_threads(args.local_threads)
    datasets = prompt_sets(args.n)
    with tempfile.TemporaryDirectory() as root:
        paths = []
        for family, seed in FAMILIES:
            model, tokenizer = tiny_models.build(family, seed)
            model.save_pretrained(Path(root) / family)
            tokenizer.save_pretrained(Path(root) / family)
            paths.append(str(Path(root) / family))
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        try:
            _, local = run(paths, datasets, "local", args)
            _, remote = run(paths, datasets, "ray", args)  # also the warm-up: workers import torch once
            if not all(same(a, b) for a, b in zip(local, remote)):
                raise SystemExit("Ray's result differs from the local executor's")
            times = {name: statistics.median(run(paths, datasets, name, args)[0] for _ in range(args.repeats))
                     for name in ("local", "ray")}
        finally:
            ray.shutdown()
    units = len(paths) * len(datasets)
    table = "\n".join([
        f"{len(paths)} tiny models (2 layers, 32 wide) x {len(datasets)} datasets (n={args.n}) = {units} units, "
        f"k={args.k}, bootstrap={args.bootstrap}, permutations={args.permutations}; fresh cache per run; "
        f"Ray result == local result: yes",
        "",
        "| executor | wall time (median of %d) | ratio to local |" % args.repeats,
        "|---|---|---|",
        f"| local (1 process, {torch.get_num_threads()} torch threads) | {times['local']:.2f} s "
        "| 1.00 |",
        f"| ray ({args.workers} workers, 1 torch thread each) | {times['ray']:.2f} s "
        f"| {times['ray'] / times['local']:.2f} |",
        "",
        f"Ray start-up (ray.init, not included above): {startup:.1f} s; CPU: {cpu_name()}",
    ])
    if args.record:
        append_results("Zoo on Ray vs local (tiny models)", table, threads=args.workers)
    else:
        print(table)


if __name__ == "__main__":
    main()
