"""The depth-tracking verdict: "track", "no" or "undefined", never a "track" built from ties.

A pure function of a similarity matrix and the statistics computed on it (bootstrap lower
bounds, the permutation p-value of Spearman); :mod:`layerknn.report` phrases it.
"""

from __future__ import annotations

import numpy as np

from .stats import _block_slices, depth_alignment_stats

__all__ = ["depth_verdict"]


def _pair(value, name: str) -> tuple[float, float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2:
        raise ValueError(f"{name} must be a number or a pair (A->B, B->A), got {value!r}")
    return float(arr[0]), float(arr[1])


def depth_verdict(matrix: np.ndarray, num_layers_a: int, num_layers_b: int, *,
                  ci_lows=None, spearman_p=None, alpha: float = 0.05,
                  include_embeddings: bool = False) -> dict:
    """Do best matches track normalised depth?  "track", "no" or "undefined", with reasons.

    The statistic is the paper's: each layer's best match (argmax, lowest index on ties),
    then Spearman between a layer's depth and its best match's depth, in both directions.

    "undefined" (never "track") when the evidence cannot carry a verdict: the blocks used
    hold one value only (no contrast, e.g. k = n - 1 gives all ones); a direction's best
    matches are all the same layer (Spearman undefined); whether Spearman is above 0 changes
    when tied maxima go to the highest index instead of the lowest (the verdict would come
    from tie-breaking); or a given bootstrap lower bound is NaN.

    "track" needs all of: both Spearman values > 0; both bootstrap lower bounds > 0 (when
    ``ci_lows`` is given); the permutation p-value <= ``alpha`` (when ``spearman_p`` is
    given).  ``reasons`` says which criteria were not available.

    Parameters
    ----------
    matrix : array, shape (La + 1, Lb + 1)
    num_layers_a, num_layers_b : int
    ci_lows : float or (float, float), optional
        Bootstrap lower bounds of Spearman A->B and B->A.
    spearman_p : float or (float, float), optional
        Permutation p-value(s) of the Spearman statistic; for a pair the larger one is used.
        The natural choice is ``PermutationNull.spearman_p["spearman_min"]``
        (:func:`layerknn.calibration.permutation_null`), one test of both directions.
    alpha : float
    include_embeddings : bool
        Use row/column 0 too (default: blocks only).

    Returns
    -------
    dict
        ``verdict``; ``reasons`` (list of str); ``spearman_ab``, ``spearman_ba`` (paper's
        rule) and ``spearman_ab_highest``, ``spearman_ba_highest`` (ties to the highest
        index); ``tied_ab``, ``tied_ba`` (rows/columns with a tied maximum); ``contrast``
        (max - min over the cells used); ``ci_lows``, ``spearman_p``, ``alpha`` as used.

    Examples
    --------
    >>> depth_verdict(np.full((13, 19), 0.2), 12, 18)["verdict"]
    'undefined'
    >>> band = np.eye(7) + 0.1
    >>> v = depth_verdict(band, 6, 6, ci_lows=(0.8, 0.9), spearman_p=0.001)
    >>> v["verdict"], v["reasons"]
    ('track', [])
    >>> depth_verdict(band, 6, 6, spearman_p=0.2)["verdict"]
    'no'
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (num_layers_a + 1, num_layers_b + 1):
        raise ValueError(f"matrix must have shape ({num_layers_a + 1}, {num_layers_b + 1}), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("matrix must hold finite values")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lows = None if ci_lows is None else _pair(ci_lows, "ci_lows")
    p_used = None
    if spearman_p is not None:
        p_used = max(_pair(spearman_p, "spearman_p"))
        if not 0 < p_used <= 1:
            raise ValueError(f"spearman_p must be in (0, 1], got {spearman_p!r}")
    rows, cols = _block_slices(num_layers_a, num_layers_b, include_embeddings)
    sub = matrix[rows, cols]
    low = depth_alignment_stats(matrix, num_layers_a, num_layers_b, include_embeddings=include_embeddings)
    high = depth_alignment_stats(matrix, num_layers_a, num_layers_b, include_embeddings=include_embeddings,
                                 ties="highest")
    out = {
        "verdict": "no", "reasons": [],
        "spearman_ab": low["spearman_ab"], "spearman_ba": low["spearman_ba"],
        "spearman_ab_highest": high["spearman_ab"], "spearman_ba_highest": high["spearman_ba"],
        "tied_ab": int(low["tied_ab"]), "tied_ba": int(low["tied_ba"]),
        "contrast": float(sub.max() - sub.min()), "ci_lows": lows, "spearman_p": p_used, "alpha": alpha,
    }
    reasons = out["reasons"]
    if out["contrast"] == 0:
        out["verdict"] = "undefined"
        reasons.append(f"no contrast: every cell used equals {sub.flat[0]:.6g}, so best matches are ties only")
        return out
    undefined = False
    for tag, arrow, rows_name in (("ab", "A->B", "rows"), ("ba", "B->A", "columns")):
        rho, rho_high = out[f"spearman_{tag}"], out[f"spearman_{tag}_highest"]
        if np.isnan(rho):
            undefined = True
            reasons.append(f"{arrow}: every best match is the same layer, so Spearman is undefined")
        elif (rho > 0) != (rho_high > 0):
            undefined = True
            reasons.append(f"{arrow}: the verdict depends on tie-breaking ({out[f'tied_{tag}']} {rows_name} tied; "
                           f"Spearman {rho:.3f} with ties to the lowest index, {rho_high:.3f} to the highest)")
    if lows is not None and any(np.isnan(lo) for lo in lows):
        undefined = True
        reasons.append("a bootstrap lower bound of Spearman is NaN (best matches constant in most resamples)")
    if undefined:
        out["verdict"] = "undefined"
        return out
    failed = False
    for tag, arrow in (("ab", "A->B"), ("ba", "B->A")):
        if not out[f"spearman_{tag}"] > 0:
            failed = True
            reasons.append(f"Spearman {arrow} = {out[f'spearman_{tag}']:.3f} is not above 0")
    if lows is None:
        reasons.append("no bootstrap interval given: judged on point values only")
    else:
        for lo, arrow in zip(lows, ("A->B", "B->A"), strict=True):
            if not lo > 0:
                failed = True
                reasons.append(f"bootstrap lower bound of Spearman {arrow} = {lo:.3f} is not above 0")
    if p_used is None:
        reasons.append("no permutation p-value given: Spearman not tested against shuffled prompts")
    elif p_used > alpha:
        failed = True
        reasons.append(f"permutation p-value of Spearman {p_used:.4g} > alpha = {alpha:g}")
    out["verdict"] = "no" if failed else "track"
    return out
