"""Benchmark: layerknn.overlap vs plain rivals on (La=31, Lb=19, n=2048, k=10), CPU.

Part "dense": the mutual overlap against the dense-mask method, which scatters every kNN row into
an n×n 0/1 mask per layer, then for each layer pair multiplies the masks and sums rows (the usual
torch recipe). It gets its best here: masks are built once per layer (not per pair), and the
faster of two formulations is reported — per pair elementwise multiply + sum, and one batched
matmul over prompts. Results are checked to be identical before timing.

Part "measures": every ``measure=`` of layerknn.overlap against a NumPy implementation of the same
measure, vectorised over layers and prompts (set measures through a (Lb, n, k, k) equality cube,
LCS / edit distance as a dynamic programme over all (La, Lb, n) rows at once). Results are
checked to agree (to 1e-12) before timing.

Usage: python bench/bench_overlap.py [--threads 2] [--repeats 5] [--part all|dense|measures]
"""

from __future__ import annotations

import argparse

from _common import append_results, drifting_neighbours, median_seconds, reexec_without_blas_throttles

reexec_without_blas_throttles()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import layerknn  # noqa: E402
from layerknn.overlap import MEASURES  # noqa: E402


def masks_of(indices: torch.Tensor, n: int) -> torch.Tensor:
    masks = torch.zeros((indices.shape[0], n, n), dtype=torch.float32)
    masks.scatter_(2, indices.long(), 1.0)
    return masks


def dense_pairwise(mask_a, mask_b, k):
    out = torch.empty((mask_a.shape[0], mask_b.shape[0]), dtype=torch.float64)
    for a in range(mask_a.shape[0]):
        for b in range(mask_b.shape[0]):
            out[a, b] = (mask_a[a] * mask_b[b]).sum(1).mean().double() / k
    return out


def dense_matmul(mask_a, mask_b, k):
    # counts[i, a, b] = sum_j A[a, i, j] B[b, i, j]  as a batched matmul over prompts i.
    counts = torch.bmm(mask_a.permute(1, 0, 2), mask_b.permute(1, 2, 0))
    return counts.mean(0).double() / k


def _matches(a_layer: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Lb, n, k, k) bool: a_layer[i, p] == b[lb, i, q]."""
    return a_layer[None, :, :, None] == b[:, :, None, :]


def _sequence_dp(a: np.ndarray, b: np.ndarray, edit: bool) -> np.ndarray:
    """LCS length or Levenshtein distance of every (la, lb, i) row pair, one DP over all at once."""
    La, n, k = a.shape
    x, y = a[:, None], b[None]  # (La, 1, n, k), (1, Lb, n, k)
    shape = (La, b.shape[0], n)
    prev = [np.full(shape, j if edit else 0, dtype=np.int16) for j in range(k + 1)]
    for i in range(1, k + 1):
        cur = [np.full(shape, i if edit else 0, dtype=np.int16)]
        for j in range(1, k + 1):
            same = x[..., i - 1] == y[..., j - 1]
            if edit:
                cur.append(np.minimum(np.minimum(prev[j], cur[j - 1]) + 1, prev[j - 1] + ~same))
            else:
                cur.append(np.where(same, prev[j - 1] + 1, np.maximum(prev[j], cur[j - 1])))
        prev = cur
    return prev[k]


def numpy_measure(measure: str, a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """NumPy (La, Lb) mean of one measure for duplicate-free rows (the bench data)."""
    if measure in ("lcs", "edit"):
        value = _sequence_dp(a, b, measure == "edit").astype(np.float64)
        return ((k - value) if measure == "edit" else value).mean(-1) / k
    n = a.shape[1]
    depth = np.maximum.outer(np.arange(k), np.arange(k)).ravel()
    by_depth = (depth[:, None] == np.arange(k)).astype(np.float32)  # (k*k, k): match (p, q) -> max(p, q)
    out = np.empty((a.shape[0], b.shape[0]))
    for la in range(a.shape[0]):
        if measure == "cycle":
            score = (a[la][b] == np.arange(n)[None, :, None, None]).any((-1, -2))
        else:
            eq = _matches(a[la], b)
            c = eq.any(-1).sum(-1)
            if measure == "mutual":
                score = c / k
            elif measure == "jaccard":
                score = c / (2 * k - c)
            else:  # rank: shared ids at depth d = matches whose later column is < d
                hits = eq.reshape(*eq.shape[:2], k * k).astype(np.float32) @ by_depth
                score = (np.cumsum(hits, -1) / np.arange(1, k + 1)).sum(-1) / k
        out[la] = score.mean(-1)
    return out


def bench_measures(a: np.ndarray, b: np.ndarray, k: int, threads: int, repeats: int) -> str:
    rows = []
    for measure in MEASURES:
        ours = layerknn.overlap(a, b, measure=measure, num_threads=threads)
        ref = numpy_measure(measure, a, b, k)
        assert np.allclose(ours, ref, rtol=1e-12, atol=1e-12), f"{measure}: NumPy reference differs"
        t_ours = median_seconds(lambda m=measure: layerknn.overlap(a, b, measure=m, num_threads=threads), repeats)
        t_scores = median_seconds(
            lambda m=measure: layerknn.overlap(a, b, measure=m, per_prompt=True, num_threads=threads), repeats)
        t_ref = median_seconds(lambda m=measure: numpy_measure(m, a, b, k), max(1, repeats // 2))
        rows.append((measure, t_ours, t_scores, t_ref))
    table = ("| measure | layerknn mean (ms) | layerknn + per-prompt (ms) | NumPy (ms) | NumPy / layerknn |\n"
             "|---|---:|---:|---:|---:|\n")
    table += "\n".join(f"| {m} | {t * 1e3:.2f} | {ts * 1e3:.2f} | {tr * 1e3:.0f} | {tr / t:.0f}× |"
                       for m, t, ts, tr in rows)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=("all", "dense", "measures"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    La, Lb, n, k = 31, 19, 2048, 10
    a, b = drifting_neighbours(rng, La, n, k), drifting_neighbours(rng, Lb, n, k)
    if args.part in ("all", "measures"):
        table = bench_measures(a, b, k, args.threads, args.repeats)
        table += f"\n\nShape La={La}, Lb={Lb}, n={n}, k={k}; means agree to 1e-12. NumPy timed single-threaded."
        append_results("overlap measures: layerknn vs vectorised NumPy (CPU)", table, args.threads)
    if args.part in ("all", "dense"):
        bench_dense(a, b, La, Lb, n, k, args.threads, args.repeats)


def bench_dense(a, b, La, Lb, n, k, threads, repeats) -> None:
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    ours = layerknn.overlap(a, b, num_threads=threads)
    mask_a, mask_b = masks_of(ta, n), masks_of(tb, n)
    for name, fn in (("pairwise", dense_pairwise), ("matmul", dense_matmul)):
        assert np.allclose(fn(mask_a, mask_b, k).numpy(), ours, atol=1e-9), f"dense {name} differs"
    _, counts = layerknn.overlap(a, b, per_prompt=True, num_threads=threads)
    assert np.allclose(counts.mean(-1) / k, ours)

    t_ours = median_seconds(lambda: layerknn.overlap(a, b, num_threads=threads), repeats)
    t_counts = median_seconds(
        lambda: layerknn.overlap(a, b, per_prompt=True, num_threads=threads), repeats)
    t_masks = median_seconds(lambda: (masks_of(ta, n), masks_of(tb, n)), 3)
    t_pair = median_seconds(lambda: dense_pairwise(mask_a, mask_b, k), 1, 0) + t_masks
    t_mm = median_seconds(lambda: dense_matmul(mask_a, mask_b, k), 3) + t_masks
    best = min(t_pair, t_mm)
    rows = [
        ("layerknn.overlap (mean)", t_ours, best / t_ours),
        ("layerknn.overlap (per-prompt counts)", t_counts, best / t_counts),
        ("dense mask, pairwise multiply+sum", t_pair, t_pair / t_ours),
        ("dense mask, batched matmul", t_mm, t_mm / t_ours),
    ]
    table = "| method | median (ms) | best dense / method (or method / layerknn) |\n|---|---:|---:|\n"
    table += "\n".join(f"| {m} | {t * 1e3:.2f} | {r:.1f}× |" for m, t, r in rows)
    table += (f"\n\nShape La={La}, Lb={Lb}, n={n}, k={k}; results identical. "
              f"Dense times include building the masks ({t_masks * 1e3:.0f} ms).")
    append_results("overlap: layerknn vs dense n×n masks (CPU)", table, threads)


if __name__ == "__main__":
    main()
