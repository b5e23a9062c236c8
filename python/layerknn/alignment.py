"""Monotone alignment of two models' layers: the best order-preserving layer map.

Best matches (:func:`layerknn.stats.best_match`) pick each layer's partner independently and
may jump back and forth.  A monotone path instead maps A's layers to B's layers in order
(``path[0] <= path[1] <= ...``) and maximises the total (equivalently mean) similarity of the
chosen cells.  It is found exactly by dynamic programming in O(R C) per matrix, batched over
leading axes like the other statistics.  Among equally good paths the lexicographically
smallest wins (lowest columns first), matching the lowest-index tie rule elsewhere.

:func:`align` puts the three correspondences behind one call: ``"argmax"`` (best matches),
``"monotone"`` (this path) and ``"ot"`` (an entropic optimal-transport coupling by depth mass,
:mod:`layerknn.alignment_ot`), each with a global score (the mean similarity of matched
cells) and, from per-prompt counts, bootstrap bands recomputed on every replicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stats
from .alignment_ot import check_reg, ot_coupling
from .bootstrap import bootstrap_matrices
from .options import check_count

__all__ = ["monotone_path", "align", "Alignment", "METHODS"]

METHODS = ("argmax", "monotone", "ot")


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


@dataclass(frozen=True, eq=False)
class Alignment:
    """A correspondence between two models' layers, its global score and bootstrap bands.

    Attributes
    ----------
    method : str
        ``"argmax"``, ``"monotone"`` or ``"ot"``.
    num_layers : tuple of int
        Block counts (La, Lb).
    layers_a, layers_b : int arrays (R,), (C,)
        The layers aligned (blocks 1..L, or 0..L with the embeddings).
    depth : float array (R,)
        Matched normalised depth in B (``l_b / Lb``) of each layer of A; for ``"ot"`` the
        coupling's barycentric projection ``sum_j P[i, j] depth_b[j] / sum_j P[i, j]``.
    score : float
        Mean similarity of the matched cells; for ``"ot"`` ``sum(P * matrix)`` (P sums to 1).
    path : int array (R,) or None
        The B layer matched to each layer of A (``"argmax"``, ``"monotone"``).
    coupling : float array (R, C) or None
        The transport coupling (``"ot"``): rows sum to ``1/R``, columns to ``1/C``.
    reg : float or None
        The coupling's entropic regularisation (``"ot"``).
    bands : dict or None
        ``depth_low``/``depth_high`` (R,), ``score_low``/``score_high``: percentile bands over
        ``n_boot`` prompt resamples (``seed``, ``level``), the alignment recomputed on each.
    bands_reason : str or None
        Why ``bands`` is None.
    """

    method: str
    num_layers: tuple
    layers_a: np.ndarray
    layers_b: np.ndarray
    depth: np.ndarray
    score: float
    path: np.ndarray | None = None
    coupling: np.ndarray | None = None
    reg: float | None = None
    bands: dict | None = None
    bands_reason: str | None = None

    @property
    def matched_layer(self) -> np.ndarray:
        """Matched position in B's layer numbering (``depth * Lb``; fractional for ``"ot"``)."""
        return self.depth * self.num_layers[1]

    def to_dict(self) -> dict:
        """JSON-ready: arrays as lists, NumPy scalars as Python numbers."""
        out = {}
        for key, value in self.__dict__.items():
            if isinstance(value, dict):
                value = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in value.items()}
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        out["num_layers"] = list(self.num_layers)
        return out


def _solve(sub: np.ndarray, method: str, reg: float | None, depth_b: np.ndarray):
    """(path, coupling, matched depth, score) of a stack of sub-matrices (..., R, C)."""
    if method == "ot":
        coupling = ot_coupling(sub, reg)
        mass = coupling.sum(axis=-1)
        return None, coupling, (coupling @ depth_b) / mass, (coupling * sub).sum(axis=(-2, -1))
    path = stats.best_match(sub) if method == "argmax" else monotone_path(sub)["path"]
    score = np.take_along_axis(sub, path[..., None], axis=-1)[..., 0].mean(axis=-1)
    return path, None, depth_b[path], score


def align(matrix: np.ndarray, num_layers_a: int, num_layers_b: int, method: str = "monotone", *,
          reg: float = 0.1, include_embeddings: bool = False, counts: np.ndarray | None = None, k: int = 1,
          n_boot: int = 1000, seed: int | None = 0, level: float = 0.95) -> Alignment:
    """Align A's layers to B's by best matches, the best monotone path or an OT coupling.

    Parameters
    ----------
    matrix : float array, shape (La + 1, Lb + 1)
        Similarities, row/column 0 the embeddings.
    num_layers_a, num_layers_b : int
    method : {"argmax", "monotone", "ot"}
        ``"argmax"``: each layer's best match (:func:`layerknn.stats.best_match`, lowest index
        on ties); ``"monotone"``: :func:`monotone_path`; ``"ot"``: the entropic optimal
        transport coupling of :func:`layerknn.alignment_ot.ot_coupling` (needs POT).
    reg : float
        ``"ot"`` only: entropic regularisation, relative to the matrix's range (>= 0.02).
    include_embeddings : bool
        Align rows/columns 0 too; by default blocks 1..L only.
    counts : array (La + 1, Lb + 1, n), optional
        Per-prompt counts (divided by ``k``) for the bootstrap bands; None: no bands.
    k, n_boot, seed, level
        Bootstrap settings (as :func:`layerknn.bootstrap.bootstrap_intervals`; same seed,
        same resamples); ``n_boot=0`` skips the bands.

    Returns
    -------
    Alignment

    Examples
    --------
    >>> m = np.array([[0.9, 0.0, 0.0],
    ...               [0.0, 0.9, 0.1],
    ...               [0.0, 0.2, 0.7],
    ...               [0.0, 0.8, 0.6]])   # 3 blocks of A, 2 of B
    >>> a = align(m, 3, 2, "argmax")
    >>> a.path.tolist(), a.depth.tolist(), round(a.score, 4)
    ([1, 2, 1], [0.5, 1.0, 0.5], 0.8)
    >>> align(m, 3, 2, "monotone").path.tolist()
    [1, 2, 2]
    >>> a = align(m, 3, 2, "ot", reg=0.05)
    >>> np.round(a.depth, 2).tolist(), a.bands_reason
    ([0.5, 1.0, 0.75], 'no per-prompt counts (a bare matrix)')
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    reg = check_reg(reg) if method == "ot" else None
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (num_layers_a + 1, num_layers_b + 1):
        raise ValueError(f"matrix must have shape {(num_layers_a + 1, num_layers_b + 1)}, got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("matrix must hold finite values")
    n_boot = check_count(n_boot, "n_boot")
    start = 0 if include_embeddings else 1
    layers_a, layers_b = np.arange(start, num_layers_a + 1), np.arange(start, num_layers_b + 1)
    depth_b = stats.layer_depths(num_layers_b)[start:]
    path, coupling, depth, score = _solve(matrix[start:, start:], method, reg, depth_b)
    bands, reason = None, None
    if counts is None:
        reason = "no per-prompt counts (a bare matrix)"
    elif n_boot == 0:
        reason = "n_boot=0 (no bootstrap)"
    else:
        if np.shape(counts) != matrix.shape + np.shape(counts)[-1:]:
            raise ValueError(f"counts must have shape {matrix.shape + ('n',)}, got {np.shape(counts)}")
        reps = bootstrap_matrices(counts, k, n_boot=n_boot, seed=seed)[:, start:, start:]
        _, _, rep_depth, rep_score = _solve(reps, method, reg, depth_b)
        d_lo, d_hi = stats.percentile_ci(rep_depth, level, axis=0)
        s_lo, s_hi = stats.percentile_ci(rep_score, level)
        bands = {"n_boot": n_boot, "seed": seed, "level": level, "depth_low": d_lo, "depth_high": d_hi,
                 "score_low": float(s_lo), "score_high": float(s_hi)}
    return Alignment(method=method, num_layers=(num_layers_a, num_layers_b), layers_a=layers_a, layers_b=layers_b,
                     depth=np.asarray(depth, dtype=np.float64), score=float(score),
                     path=None if path is None else path + start, coupling=coupling, reg=reg, bands=bands,
                     bands_reason=reason)
