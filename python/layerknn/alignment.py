"""Monotone alignment of two models' layers: the best order-preserving layer map.

Best matches (:func:`layerknn.stats.best_match`) pick each layer's partner independently and
may jump back and forth.  A monotone path instead maps A's layers to B's layers in order
(``path[0] <= path[1] <= ...``) and maximises the total (equivalently mean) similarity of the
chosen cells.  It is found exactly by dynamic programming in O(R C) per matrix, batched over
leading axes like the other statistics.  Among equally good paths the lexicographically
smallest wins (lowest columns first), matching the lowest-index tie rule elsewhere.
"""

from __future__ import annotations

import numpy as np

__all__ = ["monotone_path"]


def monotone_path(matrix: np.ndarray) -> dict:
    """Best non-decreasing column sequence through a similarity matrix, by dynamic programming.

    Maximises ``sum_i matrix[..., i, path[i]]`` over ``path[0] <= path[1] <= ... <= path[R-1]``
    (every row gets one column; columns may repeat or be skipped).

    Parameters
    ----------
    matrix : float array, shape (..., R, C)
        Finite similarities, e.g. a comparison's matrix (slice ``[1:, 1:]`` for blocks only)
        or a stack of bootstrap replicates.

    Returns
    -------
    dict
        ``path``: int64 array (..., R), the column of each row; ``score``: float (or array of
        the batch shape), the mean of ``matrix[i, path[i]]`` over rows; ``total``: their sum.
        Ties between optimal paths go to the lexicographically smallest path.

    Examples
    --------
    >>> m = np.array([[0.9, 0.1, 0.0],
    ...               [0.0, 0.2, 0.8],
    ...               [0.1, 0.7, 0.6]])   # best matches 0, 2, 1 are not monotone
    >>> r = monotone_path(m)
    >>> r["path"].tolist(), round(r["score"], 4)
    ([0, 2, 2], 0.7667)
    >>> monotone_path(np.zeros((2, 3)))["path"].tolist()
    [0, 0]
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim < 2 or 0 in matrix.shape[-2:]:
        raise ValueError(f"matrix must have shape (..., R, C) with R, C >= 1, got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("matrix must hold finite values")
    R = matrix.shape[-2]
    # suffix[..., i, j]: best total of rows i..R-1 when row i takes column j (later rows >= j)
    suffix = np.empty_like(matrix)
    suffix[..., R - 1, :] = matrix[..., R - 1, :]
    for i in range(R - 2, -1, -1):
        reach = np.maximum.accumulate(suffix[..., i + 1, ::-1], axis=-1)[..., ::-1]  # max over j' >= j
        suffix[..., i, :] = matrix[..., i, :] + reach
    columns = np.arange(matrix.shape[-1])
    path = np.empty(matrix.shape[:-1], dtype=np.int64)
    prev = np.zeros(matrix.shape[:-2] + (1,), dtype=np.int64)
    for i in range(R):
        allowed = np.where(columns >= prev, suffix[..., i, :], -np.inf)
        prev = allowed.argmax(axis=-1)[..., None]  # first maximum: the smallest column
        path[..., i] = prev[..., 0]
    total = np.take_along_axis(matrix, path[..., None], axis=-1)[..., 0].sum(axis=-1)
    score = total / R
    if np.ndim(total) == 0:
        total, score = float(total), float(score)
    return {"path": path, "score": score, "total": total}
