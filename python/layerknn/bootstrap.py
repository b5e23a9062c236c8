"""Bootstrap intervals of a comparison from its per-prompt intersection counts (no new search).

Prompts are resampled with replacement; a replicate's cell means are ``counts @ w / (n k)``
where ``w`` counts how often each prompt was drawn, so one matrix product gives every
replicate of every cell, and the depth statistics of all replicates come from one
vectorised call of :func:`layerknn.stats.depth_alignment_stats`.
"""

from __future__ import annotations

import numpy as np

from . import stats

__all__ = ["bootstrap_intervals", "bootstrap_matrices", "transpose_intervals"]


def bootstrap_intervals(counts: np.ndarray, k: int, num_layers_a: int, num_layers_b: int, *, n_boot: int = 1000,
                        seed: int | None = 0, level: float = 0.95, near: float = 0.1, far: float = 0.3,
                        include_embeddings: bool = False, progress: bool = False) -> dict:
    """Percentile intervals of every cell and every depth statistic.

    Parameters
    ----------
    counts : array, shape (La + 1, Lb + 1, n)
        Per-prompt intersection sizes (uint16, divided by k), or per-prompt scores in [0, 1]
        of another measure (float, pass ``k=1``).
    k, num_layers_a, num_layers_b : int
    n_boot, seed, level : bootstrap settings.
    near, far, include_embeddings : geometry of the depth statistics.

    Returns
    -------
    dict
        ``matrix_low``/``matrix_high``, ``stats`` {name: (low, high)},
        ``best_depth_ab_low``/``_high``, ``best_depth_ba_low``/``_high`` and the settings.

    Examples
    --------
    >>> counts = np.full((3, 3, 40), 2, dtype=np.uint16)
    >>> ci = bootstrap_intervals(counts, 4, 2, 2, n_boot=20)
    >>> float(ci["matrix_low"][0, 0]), float(ci["matrix_high"][0, 0])
    (0.5, 0.5)
    """
    means = bootstrap_matrices(counts, k, n_boot=n_boot, seed=seed, progress=progress)
    m_lo, m_hi = stats.percentile_ci(means, level, axis=0)
    reps = stats.depth_alignment_stats(means, num_layers_a, num_layers_b, near=near, far=far,
                                       include_embeddings=include_embeddings)
    stat_ci = {}
    for name in stats.DEPTH_STATS:
        lo, hi = stats.percentile_ci(reps[name], level)
        stat_ci[name] = (float(lo), float(hi))
    ab_lo, ab_hi = stats.percentile_ci(reps["best_depth_ab"], level, axis=0)
    ba_lo, ba_hi = stats.percentile_ci(reps["best_depth_ba"], level, axis=0)
    return {
        "n_boot": n_boot, "seed": seed, "level": level, "near": near, "far": far,
        "include_embeddings": include_embeddings,
        "matrix_low": m_lo, "matrix_high": m_hi, "stats": stat_ci,
        "best_depth_ab_low": ab_lo, "best_depth_ab_high": ab_hi,
        "best_depth_ba_low": ba_lo, "best_depth_ba_high": ba_hi,
    }


def bootstrap_matrices(counts: np.ndarray, k: int, *, n_boot: int = 1000, seed: int | None = 0,
                       progress: bool = False) -> np.ndarray:
    """Every replicate's matrix: prompts resampled with replacement, cell means from the counts.

    The same ``n_boot`` and ``seed`` draw the same prompts as :func:`bootstrap_intervals`, so
    statistics computed on these replicates pair with its intervals.

    Parameters
    ----------
    counts : array, shape (R, C, n)
        Per-prompt intersection sizes (divided by ``k``) or per-prompt scores (``k=1``).
    k, n_boot, seed : int

    Returns
    -------
    float64 array, shape (n_boot, R, C)

    Examples
    --------
    >>> counts = np.array([[[0, 4]]], dtype=np.uint16)
    >>> bootstrap_matrices(counts, 4, n_boot=3, seed=1)[:, 0, 0].tolist()
    [0.5, 1.0, 0.0]
    """
    n = counts.shape[-1]
    weights = stats.bootstrap_weights(n, n_boot, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=counts.shape[0] * counts.shape[1], desc="bootstrap", unit="cell", leave=False)
    try:
        totals = stats.bootstrap_cell_totals(counts, weights, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    return totals / (n * k)


_SWAPPED_STATS = {"spearman_ab": "spearman_ba", "spearman_ba": "spearman_ab",
                  "mean_abs_depth_error_ab": "mean_abs_depth_error_ba",
                  "mean_abs_depth_error_ba": "mean_abs_depth_error_ab"}
_SWAPPED_CI = {"best_depth_ab_low": "best_depth_ba_low", "best_depth_ab_high": "best_depth_ba_high",
               "best_depth_ba_low": "best_depth_ab_low", "best_depth_ba_high": "best_depth_ab_high"}


def transpose_intervals(ci: dict) -> dict:
    """The intervals of :func:`bootstrap_intervals` seen as (B, A): matrices transposed, directions swapped.

    Examples
    --------
    >>> ci = bootstrap_intervals(np.arange(24, dtype=np.uint16).reshape(2, 3, 4) % 3, 2, 1, 2, n_boot=5)
    >>> t = transpose_intervals(ci)
    >>> t["matrix_low"].shape, t["stats"]["spearman_ab"] == ci["stats"]["spearman_ba"]
    ((3, 2), True)
    """
    out = {_SWAPPED_CI.get(key, key): value for key, value in ci.items()}
    out["matrix_low"], out["matrix_high"] = ci["matrix_low"].T, ci["matrix_high"].T
    out["stats"] = {_SWAPPED_STATS.get(key, key): value for key, value in ci["stats"].items()}
    return out
