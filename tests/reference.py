"""Plain NumPy float64 references for the engines, and the exactness checks tests use.

``reference_scores`` computes the full score matrix in float64 (fine for test sizes).
``assert_neighbors_exact`` accepts an engine result only if, row by row, it picks the same
neighbours as the float64 reference except swaps among candidates whose float64 scores lie
within a small tolerance of the k-th best (the documented near-tie exception), lists them best
first, and orders equal scores by lower index.
"""

from __future__ import annotations

import numpy as np


def reference_scores(x: np.ndarray, metric: str, y: np.ndarray | None = None) -> np.ndarray:
    """float64 scores (L, n, m) of every query row against every database row."""
    x = np.asarray(x, dtype=np.float64)
    y = x if y is None else np.asarray(y, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    if metric == "l2":
        return (
            (x**2).sum(-1)[..., :, None] + (y**2).sum(-1)[..., None, :] - 2 * x @ np.swapaxes(y, -1, -2)
        )
    return x @ np.swapaxes(y, -1, -2)


def reference_knn(x, k, metric="cosine", exclude_self=True, y=None):
    """Exact (indices, float64 scores) by full sort with the tie rule (score, then lower index)."""
    scores = reference_scores(x, metric, y)
    key = -scores if metric == "l2" else scores.copy()
    if y is None and exclude_self:
        n = key.shape[-1]
        key[..., np.arange(n), np.arange(n)] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(key.shape[-1]), key.shape), -key), axis=-1)
    idx = order[..., :k]
    return idx, np.take_along_axis(scores, idx, -1)


def assert_neighbors_exact(indices, scores, x, k, metric="cosine", exclude_self=True, y=None,
                           tol=1e-5):
    """Check an engine's (indices, scores) of shape (L, n, k) against the float64 reference."""
    indices = np.asarray(indices)
    scores = np.asarray(scores)
    ref = reference_scores(x, metric, y)
    L, n, m = ref.shape
    assert indices.shape == (L, n, k), indices.shape
    assert indices.dtype == np.int32 and scores.dtype == np.float32
    key = -ref if metric == "l2" else ref.copy()
    if y is None and exclude_self:
        key[:, np.arange(n), np.arange(n)] = -np.inf
    scale = max(1.0, float(np.abs(ref).max()))
    atol = tol * scale
    for layer in range(L):
        for i in range(n):
            row, got = key[layer, i], indices[layer, i]
            assert len(set(got.tolist())) == k, f"duplicate neighbours in layer {layer} row {i}: {got}"
            assert got.min() >= 0 and got.max() < m
            if y is None and exclude_self:
                assert i not in got, f"row {i} of layer {layer} lists itself"
            kth = np.sort(row)[::-1][k - 1]
            assert (row[got] >= kth - atol).all(), (
                f"layer {layer} row {i}: returned a neighbour clearly worse than the k-th best"
            )
            must = np.flatnonzero(row > kth + atol)
            assert set(must.tolist()) <= set(got.tolist()), f"layer {layer} row {i}: missed {must}"
            np.testing.assert_allclose(scores[layer, i], ref[layer, i, got], rtol=1e-4, atol=10 * atol)
            got_key = -scores[layer, i] if metric == "l2" else scores[layer, i]
            for c in range(k - 1):
                assert got_key[c] > got_key[c + 1] or (
                    got_key[c] == got_key[c + 1] and got[c] < got[c + 1]
                ), f"layer {layer} row {i}: not best-first with lower-index ties: {got}, {got_key}"
