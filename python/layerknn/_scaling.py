"""Power-of-two rescaling that keeps the k-NN engines' float32 arithmetic finite: ``safe_knn``.

The engines compute inner products and squared distances in float32. Their intermediates
(products, partial sums, squared norms, ``|x|^2 + |y|^2 - 2 x.y``, candidate windows) stay
finite, and far above the subnormal range, while the largest row norm of a layer lies in
[2^-32, 2^60] (``csrc/cpu/safe_range.h``). The CPU engine reports a layer outside it as
OverflowError; CUDA inputs are checked here from the float64 row norms computed up front.
Such a layer is multiplied by 2^-e, with e bringing its largest row norm into [1/2, 1). Every
float32 product and sum then scales exactly by a power of two, so the engine ranks exactly as
it would with an unbounded exponent range, and its scores are scaled back exactly (times
2^(e_x + e_y) in float64, then rounded once to float32). Inner product scales x and y
separately; squared L2 needs one common scale; cosine normalises every row first and never
needs this.

Contract. Indices equal a float64 reference's except among candidates whose scores differ by
less than about ``d * 2^-24 * max|x| * max|y|`` per layer (the float32 rounding the engines
always have). Scaling down only disturbs components below 2^-126 of the scaled largest norm,
i.e. below 2^-126 relative to it, far inside that tolerance. Scores beyond float32's range after
scaling back raise ValueError; scores below its normal range come back rounded (to subnormals
or 0), still ordered by their exact values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

SAFE_NORM_EXPONENTS = (-32, 60)  # csrc/cpu/safe_range.h: kSafeNormMin = 2^-32, kSafeNormMax = 2^60
_MARGIN = 2  # rescale already outside [2^-30, 2^58]: every layer the engine rejects is rescaled
FLOAT32_MAX = float(np.finfo(np.float32).max)

Run = Callable[[Any, Any], "tuple[Any, Any]"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Layer l of x is multiplied by 2^-x_exp[l], of y by 2^-y_exp[l]; scores by 2^score_exp[l]."""

    x_exp: np.ndarray  # (L,) int
    y_exp: np.ndarray | None  # (L,) int, None in the self-join
    norms: np.ndarray  # (L,) largest row norm of x or y, for messages

    @property
    def score_exp(self) -> np.ndarray:
        return self.x_exp + (self.x_exp if self.y_exp is None else self.y_exp)


def _exponents(max_norms: np.ndarray) -> np.ndarray:
    """e per layer with max_norm * 2^-e in [1/2, 1), or 0 where the layer is already safe."""
    low, high = SAFE_NORM_EXPONENTS
    safe = (max_norms == 0) | ((max_norms >= 2.0 ** (low + _MARGIN)) & (max_norms <= 2.0 ** (high - _MARGIN)))
    return np.where(safe, 0, np.frexp(max_norms)[1]).astype(np.int64)


def plan(metric: str, x_sq_norms: np.ndarray, y_sq_norms: np.ndarray | None = None) -> Plan | None:
    """The rescaling (L, n) / (L, m) float64 squared row norms call for, or None if none."""
    if metric == "cosine":
        return None
    nx = np.sqrt(x_sq_norms.max(axis=1))
    ny = nx if y_sq_norms is None else np.sqrt(y_sq_norms.max(axis=1))
    if y_sq_norms is None:
        x_exp, y_exp = _exponents(nx), None
    elif metric == "ip":
        x_exp, y_exp = _exponents(nx), _exponents(ny)
    else:  # squared L2: |x - y|^2 only scales exactly under one common factor
        x_exp = y_exp = _exponents(np.maximum(nx, ny))
    if not x_exp.any() and (y_exp is None or not y_exp.any()):
        return None
    return Plan(x_exp, y_exp, np.maximum(nx, ny))


def _times_power_of_two(x: Any, exps: np.ndarray) -> Any:
    """Copy of x (L, r, d) float32 with layer l times 2^-exps[l], each value rounded once."""
    if not exps.any():
        return x
    out = x.copy() if isinstance(x, np.ndarray) else x.clone()
    for layer in np.flatnonzero(exps):
        e = -int(exps[layer])
        if isinstance(x, np.ndarray):
            out[layer] = np.ldexp(x[layer], e)
        else:  # float64 holds every such product exactly; one rounding back to float32
            out[layer] = (x[layer].double() * 2.0**e).float()
    return out


def _scale_back(scores: Any, p: Plan, metric: str, names: str) -> Any:
    """scores (L, n, k) float32 times 2^score_exp per layer, in place; ValueError past float32."""
    for layer in np.flatnonzero(p.score_exp):
        factor = 2.0 ** int(p.score_exp[layer])
        if isinstance(scores, np.ndarray):
            exact = scores[layer].astype(np.float64) * factor
            top = float(np.abs(exact).max())
        else:
            exact = scores[layer].double() * factor
            top = float(exact.abs().max())
        if top > FLOAT32_MAX:
            raise ValueError(
                f"{names} too large for {metric} scores in float32: layer {layer} has scores up to {top:.3g} "
                f"(largest row norm {p.norms[layer]:.3g}), beyond float32's {FLOAT32_MAX:.3g}; "
                'use metric="cosine" or rescale the inputs'
            )
        scores[layer] = exact.astype(np.float32) if isinstance(scores, np.ndarray) else exact.float()
    return scores


def safe_knn(run: Run, x: Any, y: Any | None, metric: str,
             norms: Callable[[], tuple[np.ndarray, np.ndarray | None]],
             known: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[Any, Any]:
    """``run(x, y) -> (indices, scores)`` on inputs rescaled where the engines need it.

    ``norms()`` gives the float64 squared row norms (L, n) of x and of y (or None), validating
    the rows on the way; ``known`` is that result when the caller already has it (CUDA inputs),
    in which case the plan is made up front. Otherwise ``run`` is tried as is, and only an
    OverflowError from the CPU engine makes this compute the norms and rescale.
    """
    if known is None:
        try:
            return run(x, y)
        except OverflowError:
            known = norms()
    p = plan(metric, *known)
    if p is None:
        return run(x, y)
    indices, scores = run(_times_power_of_two(x, p.x_exp), None if y is None else _times_power_of_two(y, p.y_exp))
    return indices, _scale_back(scores, p, metric, "x is" if y is None else "x and y are")
