"""Bootstrap intervals of a comparison from its per-prompt intersection counts (no new search).

Prompts are resampled with replacement; a replicate's cell means are ``counts @ w / (n k)``
where ``w`` counts how often each prompt was drawn, so one matrix product gives every
replicate of every cell, and the depth statistics of all replicates come from one
vectorised call of :func:`layerknn.stats.depth_alignment_stats`.
"""

from __future__ import annotations

import numpy as np

from . import stats

__all__ = ["bootstrap_intervals"]


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
    means = totals / (n * k)
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
