"""Reports of a comparison: the depth-tracking verdict, the plain-text summary and the JSON report.

Everything here reads a :class:`~layerknn.Comparison` and its stored statistics; nothing
is computed twice and nothing is written to disk (the CLI decides where reports go).
The summary names every setting that changes the numbers (weights' dtype, token limit,
truncation, k, n, pooling, data), so a figure can be reproduced from its report alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .verdict import depth_verdict

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .comparison import Comparison

__all__ = ["verdict", "summary", "to_dict", "jsonable", "FORMAT"]

FORMAT = "layerknn.Comparison/2"


def jsonable(obj: Any) -> Any:
    """``obj`` with arrays as lists, NumPy scalars as Python numbers, non-finite floats as None.

    Examples
    --------
    >>> jsonable({"a": np.array([1.5, np.nan]), "b": np.int64(3)})
    {'a': [1.5, None], 'b': 3}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)  # paths, devices, dtypes: their readable names


def verdict(c: "Comparison") -> dict:
    """Whether best matches track normalised depth: "track", "no" or "undefined".

    See :func:`layerknn.verdict.depth_verdict`.

    Uses the bootstrap lower bounds of Spearman when :meth:`Comparison.bootstrap` ran and the
    permutation p-value of Spearman when :meth:`Comparison.permutation_test` ran.

    Returns
    -------
    dict
        :func:`~layerknn.verdict.depth_verdict`'s result plus ``tracks_depth`` (bool) and ``basis`` (one line).
    """
    geometry = c.geometry()
    lows = None
    if c.ci is not None:
        lows = (c.ci["stats"]["spearman_ab"][0], c.ci["stats"]["spearman_ba"][0])
    spearman_p = (c.permutation_info or {}).get("spearman_p")
    out = depth_verdict(c.matrix, c.num_layers_a, c.num_layers_b, ci_lows=lows, spearman_p=spearman_p,
                              include_embeddings=geometry["include_embeddings"])
    out["tracks_depth"] = out["verdict"] == "track"
    criteria = ["Spearman > 0 both ways"]
    if lows is not None:
        criteria.append(f"{int(round(c.ci['level'] * 100))}% bootstrap CI lower bounds {lows[0]:.3f} (A->B), "
                        f"{lows[1]:.3f} (B->A) above 0")
    if spearman_p is not None:
        criteria.append(f"permutation p of Spearman {out['spearman_p']:.4g} <= {out['alpha']:g}")
    out["basis"] = "criterion: " + "; ".join(criteria) + ("; " + "; ".join(out["reasons"]) if out["reasons"] else "")
    return out


def _run_line(c: "Comparison") -> str | None:
    run = []
    for label in ("a", "b"):
        info = c.meta.get(f"model_{label}") or {}
        if info.get("dtype") or info.get("max_length"):
            run.append(f"{label.upper()}: {info.get('dtype') or '?'} weights, max_length "
                       f"{info.get('max_length')}, {info.get('truncated') or 0} prompts truncated")
    return "extraction: " + "; ".join(run) if run else None


def summary(c: "Comparison") -> str:
    """A plain-text report: settings, similarity levels, best-match depth tracking with CIs."""
    geometry = c.geometry()
    da = c.depth_alignment(**geometry)
    ci = c.ci["stats"] if c.ci else {}
    level = f"{int(round(c.ci['level'] * 100))}% CI " if c.ci else ""

    def fmt(name: str, digits: int = 3) -> str:
        text = f"{da[name]:.{digits}f}"
        if name in ci:
            lo, hi = ci[name]
            text += f" [{level}{lo:.{digits}f}, {hi:.{digits}f}]"
        return text

    blocks = c.matrix[1:, 1:]
    i, j = (int(x) + 1 for x in np.unravel_index(np.argmax(blocks), blocks.shape))
    v = verdict(c)
    lines = [
        f"layerknn comparison: A = {c.name_a} ({c.num_layers_a} blocks), B = {c.name_b} ({c.num_layers_b} blocks)",
        f"data: {c.dataset or 'n/a'}; n = {c.n} prompts; k = {c.k}; pooling = {c.pooling or 'n/a'}; "
        + (f"chance = k/(n-1) = {c.chance:.4f}" if c.measure == "mutual" else
           f"measure = {c.measure} (its chance level is the permutation null's mean, below)"),
    ]
    run = _run_line(c)
    if run:
        lines.append(run)
    lines += [
        f"similarity over blocks: max {blocks.max():.3f} at A block {i} / B block {j} "
        + (f"({blocks.max() / c.chance:.1f}x chance); " if c.measure == "mutual" else "; ")
        + f"mean {blocks.mean():.3f}; "
        f"embeddings (row/col 0) x embeddings {c.matrix[0, 0]:.3f}",
        f"near-diagonal mean (|depth difference| <= {geometry['near']}): {fmt('near_mean')}",
        f"off-diagonal mean  (|depth difference| >  {geometry['far']}): {fmt('far_mean')}",
        f"best-match depth tracking (blocks only): Spearman A->B {fmt('spearman_ab')}, B->A {fmt('spearman_ba')}",
        f"mean |depth error| of best matches: {fmt('mean_abs_depth_error')}",
        f"best matches decided by a tie (lowest index taken, as in the paper): {v['tied_ab']} of A's blocks, "
        f"{v['tied_ba']} of B's blocks",
    ]
    lines.append(_alignment_line(c))
    word = {"track": "TRACK", "no": "do NOT track", "undefined": "UNDEFINED: cannot tell whether they track"}
    lines.append(f"VERDICT: best matches {word[v['verdict']]} normalised depth ({v['basis']})")
    lines += _calibration_lines(c)
    for label, rates in (("A", c.tie_rate_a), ("B", c.tie_rate_b)):
        if rates is not None:
            block_rates = np.asarray(rates)[1:]
            warn = ("  <- tie-dominated: its neighbour sets are arbitrary (lowest index wins), so row/col 0 "
                    "is left out of the depth statistics" if rates[0] > 0.5 else "")
            lines.append(f"prompts with tied k-th/(k+1)-th neighbour scores in {label}: embeddings "
                         f"{rates[0]:.1%}, blocks max {block_rates.max():.1%} "
                         f"(block {int(np.argmax(block_rates)) + 1}){warn}")
    return "\n".join(lines)


def _alignments(c: "Comparison") -> dict:
    """Best matches and the monotone path (bands as the bootstrap's), plus every OT coupling already computed.

    OT is reported when asked for (``c.alignment("ot")``), not computed here: POT's import and
    a Sinkhorn solve per bootstrap replicate would cost more than the rest of a cached rerun.
    """
    out = {method: c.alignment(method) for method in ("argmax", "monotone")}
    done_ot = [al for key, al in c._alignments.items() if key[0] == "ot"]
    if done_ot:
        out["ot"] = done_ot[-1]
    return out


def _alignment_line(c: "Comparison") -> str:
    parts = []
    for method, al in _alignments(c).items():
        label = {"argmax": "best matches", "monotone": "monotone path", "ot": "OT coupling"}[method]
        label += f" (reg {al.reg:g})" if al.reg is not None else ""
        b = al.bands
        ci = f" [{int(round(b['level'] * 100))}% CI {b['score_low']:.3f}, {b['score_high']:.3f}]" if b else ""
        parts.append(f"{label} {al.score:.3f}{ci}")
    return "layer alignment A->B, mean similarity of matched cells: " + "; ".join(parts)


def _calibration_lines(c: "Comparison") -> list[str]:
    null = c.calibration
    if null is None:
        return []
    blocks = (slice(1, None), slice(1, None))
    family = null.p_adjusted[blocks]
    calibrated = null.calibrated[blocks]
    i, j = (int(x) + 1 for x in np.unravel_index(np.nanargmax(calibrated), calibrated.shape))
    return [
        f"permutation null ({null.n_perm} prompt shuffles, no new search; smallest attainable p = "
        f"{1 / (1 + null.n_perm):.4f}): {int((null.p_values[blocks] <= 0.05).sum())} of {family.size} block cells "
        f"above chance at p <= 0.05 per cell, {int((family <= 0.05).sum())} family-wise (max statistic)",
        f"family-wise p of the largest block cell: {null.p_family:.4f}; Spearman of depth tracking beats "
        f"shuffled prompts with p = {null.spearman_p['spearman_min']:.4f} (both directions)",
        f"calibrated similarity (matrix - null mean) / (1 - null mean) over blocks: max {np.nanmax(calibrated):.3f} "
        f"at A block {i} / B block {j}; mean {np.nanmean(calibrated):.3f}",
    ]


def to_dict(c: "Comparison") -> dict:
    """JSON-serialisable report: settings, matrix, best matches, statistics, verdict, provenance."""
    geometry = c.geometry()
    out = {
        "format": FORMAT,
        "names": list(c.names), "num_layers": [c.num_layers_a, c.num_layers_b],
        "n": c.n, "k": c.k, "measure": c.measure, "chance": c.chance if c.measure == "mutual" else None,
        "dataset": c.dataset, "pooling": c.pooling,
        "matrix": c.matrix.tolist(),
        "best_match": {key: np.asarray(v).tolist() for key, v in c.best_match().items()},
        "best_match_blocks": {key: np.asarray(v).tolist()
                              for key, v in c.best_match(include_embeddings=False).items()},
        "depth_alignment": jsonable(c.depth_alignment(**geometry)),
        "verdict": jsonable(verdict(c)),
        "alignment": {method: jsonable(al.to_dict()) for method, al in _alignments(c).items()},
        "tie_rate_a": None if c.tie_rate_a is None else np.asarray(c.tie_rate_a).tolist(),
        "tie_rate_b": None if c.tie_rate_b is None else np.asarray(c.tie_rate_b).tolist(),
        "ci": jsonable(c.ci) if c.ci is not None else None,
        "p_values": None if c.p_values is None else c.p_values.tolist(),
        "permutation": jsonable(c.permutation_info),
        "calibration": None if c.calibration is None else jsonable({
            "p_family": c.calibration.p_family, "spearman": c.calibration.spearman,
            "spearman_p": c.calibration.spearman_p, "null_mean": c.calibration.null_mean,
            "null_std": c.calibration.null_std, "p_adjusted": c.calibration.p_adjusted,
            "calibrated": c.calibration.calibrated, **c.calibration.settings}),
        "meta": jsonable(c.meta),
    }
    return out
