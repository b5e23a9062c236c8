"""Benchmark: layerknn.overlap vs the dense-mask method on (La=31, Lb=19, n=2048, k=10).

The dense-mask method scatters every kNN row into an n×n 0/1 mask per layer, then for each layer
pair multiplies the masks and sums rows (the usual torch recipe). It gets its best here: masks
are built once per layer (not per pair), and the faster of two formulations is reported — per
pair elementwise multiply + sum, and one batched matmul over prompts. Results are checked to be
identical before timing. Usage: python bench/bench_overlap.py [--threads 2] [--mega]
"""

from __future__ import annotations

import argparse

from _common import append_results, median_seconds, reexec_without_blas_throttles

reexec_without_blas_throttles()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import layerknn  # noqa: E402


def random_knn(rng, layers, n, k):
    """Realistic neighbour sets: layers drift slowly, so adjacent layers overlap strongly."""
    x = rng.standard_normal((n, 64)).astype(np.float32)
    acts = []
    for _ in range(layers):
        x = x + 0.35 * rng.standard_normal(x.shape).astype(np.float32)
        acts.append(x.copy())
    return layerknn.knn(np.stack(acts), k).indices


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    La, Lb, n, k = 31, 19, 2048, 10
    a, b = random_knn(rng, La, n, k), random_knn(rng, Lb, n, k)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    ours = layerknn.overlap(a, b, num_threads=args.threads)
    mask_a, mask_b = masks_of(ta, n), masks_of(tb, n)
    for name, fn in (("pairwise", dense_pairwise), ("matmul", dense_matmul)):
        assert np.allclose(fn(mask_a, mask_b, k).numpy(), ours, atol=1e-9), f"dense {name} differs"
    _, counts = layerknn.overlap(a, b, per_prompt=True, num_threads=args.threads)
    assert np.allclose(counts.mean(-1) / k, ours)

    t_ours = median_seconds(lambda: layerknn.overlap(a, b, num_threads=args.threads), args.repeats)
    t_counts = median_seconds(
        lambda: layerknn.overlap(a, b, per_prompt=True, num_threads=args.threads), args.repeats)
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
    table += f"\n\nShape La={La}, Lb={Lb}, n={n}, k={k}; results identical. Dense times include building the masks ({t_masks * 1e3:.0f} ms)."
    append_results("overlap: layerknn vs dense n×n masks (CPU)", table, args.threads)


if __name__ == "__main__":
    main()
