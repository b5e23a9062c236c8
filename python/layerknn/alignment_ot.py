"""Entropic optimal transport between two models' layers, through the POT library (optional).

Each model's layers carry equal mass (depth mass: ``1/R`` per row, ``1/C`` per column) and
moving mass from A's layer i to B's layer j costs the similarity's shortfall,
``(max - m[i, j]) / (max - min)``: ``1 - similarity`` rescaled by the matrix's range.  Only the
scale matters (a constant added to the cost leaves the coupling unchanged); dividing by the
range makes ``reg`` relative to the matrix's contrast, so ``reg=0.1`` means the same for a
faint and a sharp matrix: cells whose costs differ by 10% of the range differ in mass by a
factor of e.  The coupling solves ``min <P, cost> - reg H(P)`` over couplings with those
marginals, by Sinkhorn's matrix scaling (``ot.batch.bregman_projection_batch``, POT >= 0.9.6),
batched over bootstrap replicates.  The problem is solved transposed so that A's marginal is
projected last: rows sum to ``1/R`` to rounding, columns to ``1/C`` within the tolerance.
"""

from __future__ import annotations

import math
import warnings
from numbers import Real

import numpy as np

__all__ = ["ot_coupling", "check_reg", "REG_MIN", "INSTALL_HINT"]

REG_MIN = 0.02  # below this, Sinkhorn needs tens of thousands of iterations on real layer counts
INSTALL_HINT = "pip install 'layerknn[align]' (or pip install 'pot>=0.9.6')"
_TOL = 1e-9  # 2-norm of the column-marginal error at which Sinkhorn stops
_MAX_ITER = 100_000
_CHUNK = 8 << 20  # cells per batch of replicates (bounds the solver's temporaries to ~64 MiB each)


def _pot_batch():
    try:
        from ot.batch import bregman_projection_batch
    except ImportError as exc:
        raise ImportError(f"method='ot' needs the POT library with ot.batch (POT >= 0.9.6): {INSTALL_HINT}") from exc
    return bregman_projection_batch


def check_reg(reg) -> float:
    """``reg`` as a float, or ValueError/TypeError naming it.

    Examples
    --------
    >>> check_reg(0.1)
    0.1
    """
    if isinstance(reg, bool) or not isinstance(reg, Real):
        raise TypeError(f"reg must be a real number, got {type(reg).__name__}")
    reg = float(reg)
    if not (math.isfinite(reg) and reg >= REG_MIN):
        raise ValueError(f"reg must be a finite number >= {REG_MIN} (relative to the matrix's similarity range), "
                         f"got {reg}")
    return reg


def ot_coupling(matrix: np.ndarray, reg: float = 0.1) -> np.ndarray:
    """Entropic optimal-transport coupling of rows and columns under uniform (depth) mass.

    Parameters
    ----------
    matrix : float array, shape (..., R, C)
        Similarities (higher = closer); leading axes are a batch, e.g. bootstrap replicates.
    reg : float
        Entropic regularisation relative to the matrix's range (>= 0.02): small = close to
        a hard assignment, large = close to the uniform coupling.

    Returns
    -------
    float64 array, shape (..., R, C)
        Non-negative, rows summing to ``1/R``, columns to ``1/C``.  A constant matrix gives
        the uniform coupling ``1/(R C)``.

    Examples
    --------
    >>> p = ot_coupling(np.eye(3), reg=0.05)
    >>> np.round(p * 3, 6).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    >>> p = ot_coupling(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    >>> np.round(p.sum(axis=1), 12).tolist(), np.round(p.sum(axis=0), 9).tolist()
    ([0.333333333333, 0.333333333333, 0.333333333333], [0.5, 0.5])
    """
    reg = check_reg(reg)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim < 2 or 0 in matrix.shape[-2:]:
        raise ValueError(f"matrix must have shape (..., R, C) with R, C >= 1, got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("matrix must hold finite values")
    project = _pot_batch()
    R, C = matrix.shape[-2:]
    flat = matrix.reshape(-1, R, C)
    high = flat.max(axis=(1, 2), keepdims=True)
    span = high - flat.min(axis=(1, 2), keepdims=True)
    cost = np.divide(high - flat, span, out=np.zeros_like(flat), where=span > 0)
    out = np.empty_like(flat)
    step = max(1, _CHUNK // (R * C))
    for start in range(0, len(flat), step):
        part = cost[start:start + step]
        kernel = np.exp(-np.swapaxes(part, 1, 2) / reg)  # transposed: (B, C, R); exp(-1/reg) > 0 for reg >= REG_MIN
        rows, cols = np.full((len(part), C), 1.0 / C), np.full((len(part), R), 1.0 / R)
        with np.errstate(under="ignore"):
            plan = project(kernel, rows, cols, max_iter=_MAX_ITER, tol=_TOL)["T"]
        out[start:start + step] = np.swapaxes(np.asarray(plan), 1, 2)
    error = float(np.abs(out.sum(axis=1) - 1.0 / C).max())
    if error > 1e-6:
        warnings.warn(f"Sinkhorn stopped after {_MAX_ITER} iterations with column-marginal error {error:.2g}; "
                      f"raise reg (got {reg})", RuntimeWarning, stacklevel=2)
    return out.reshape(matrix.shape)
