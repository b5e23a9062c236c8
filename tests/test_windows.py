"""Attacks on the CPU engine's error windows (csrc/cpu/tile_windows.h), the bounds its exactness
rests on: candidate lists keep every pair whose approximate tile key lies within 2 B of the k-th
best, so B must really bound |approximate tile key - exact key|.

For adversarial row pairs (huge dynamic range, a few massive features, near-cancellation,
denormal-scale values, a rounding "staircase" that makes every fp32 addition err the same way,
odd and large d), the test emulates in NumPy what each tile precision computes -- the fp32
operand, bf16 rounding (with the flushes of VCVTNEPS2BF16 / VDPBF16PS), int8 quantisation with
the engine's per-row steps -- summed in float32 in many orders (natural, reversed, by magnitude,
positives first, random; with and without fused products), takes the engine's own exact score
(``_core._testing.exact_scores``) and an exact float64 ``fsum`` of the true value, and asserts:
  * |tile - true| <= tile_error,  |exact - true| <= exact_error,
  * |tile key - exact key| <= key_error = B (exact norms) and <= key_window / 2 (the norms the
    engine records, as the engine uses them),
  * the norm the engine records bounds the fp32 operand's norm (up to float64 rounding, which
    the window's relative margin of 1e-6 absorbs).
A staircase case also checks that the fp32 bound is nearly reached, so a bound made much
tighter (wrong) would be caught. Overflowing scores are out of scope (rejected before the
engine), so values stay below ~1e15.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerknn import _core

T = _core._testing
METRIC = {"ip": 0, "cosine": 1, "l2": 2}
FP32, BF16, INT8 = 0, 1, 2
GROUP = {FP32: 1, BF16: 2, INT8: 4}
F32 = np.float32
TINY = 2.0**-126  # smallest normal float32
KINDS = ["gaussian", "dynamic_range", "massive_features", "cancellation", "tiny", "staircase"]
DIMS = [1, 2, 3, 17, 255, 4097]
PAIRS = 3


@pytest.fixture(params=["scalar", "avx2"])
def level(request, monkeypatch):
    """The engine's exact score and row statistics from each table this CPU runs."""
    monkeypatch.setenv("LAYERKNN_CPU_SIMD", request.param)
    if _core.active_kernel_table() != request.param:
        pytest.skip(f"this CPU cannot run the {request.param} table (its level is {_core.simd_level()})")
    return request.param


# ---- adversarial rows ------------------------------------------------------------------------


def staircase(d: int) -> np.ndarray:
    """x with x . 1 summed left to right in fp32 rounding down by almost half an ulp each step."""
    x = np.ones(d, dtype=F32)
    s = F32(0)
    for t in range(d):
        half = float(np.spacing(F32(s + F32(1)))) / 2
        if half > 2.0**-23:
            x[t] = F32(1 + half - 2.0**-23)
        s = F32(s + x[t])
    return x


def rows(kind: str, rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    """PAIRS pairs of rows (x [PAIRS, d], y [PAIRS, d]) float32 of the given kind."""
    shape = (PAIRS, d)
    if kind == "gaussian":
        x, y = rng.standard_normal(shape), rng.standard_normal(shape)
    elif kind == "dynamic_range":  # magnitudes 1e-30 .. 1e15, random signs
        x = rng.choice([-1, 1], shape) * 10.0 ** rng.uniform(-30, 15, shape)
        y = rng.choice([-1, 1], shape) * 10.0 ** rng.uniform(-30, 15, shape)
    elif kind == "massive_features":  # a few features 1e6 times the rest
        x, y = rng.standard_normal(shape), rng.standard_normal(shape)
        hot = rng.choice(d, size=min(d, 3), replace=False)
        x[:, hot] *= 1e6
        y[:, hot[: max(1, len(hot) - 1)]] *= -1e6
    elif kind == "cancellation":  # y nearly orthogonal to x, large partial sums
        x = rng.standard_normal(shape) * 1e3
        z = rng.standard_normal(shape) * 1e3
        y = z - (np.sum(x * z, 1, keepdims=True) / np.maximum(np.sum(x * x, 1, keepdims=True), 1e-300)) * x
        if d == 1:
            y = z
    elif kind == "tiny":  # denormal-scale entries, products far below the normal range
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-44, -36, shape)
        y = rng.standard_normal(shape) * 10.0 ** rng.uniform(-44, 2, shape)
        x[:, 0] = 1e-3  # keep cosine rows normalisable
    elif kind == "staircase":
        x = np.broadcast_to(staircase(d), shape).copy()
        y = np.ones(shape)
        x[1:] *= rng.choice([-1, 1], (PAIRS - 1, d))  # sign noise on the other pairs
    else:
        raise AssertionError(kind)
    return np.asarray(x, dtype=F32), np.asarray(y, dtype=F32)


# ---- what the engine computes, emulated ------------------------------------------------------


def stats(row: np.ndarray, cosine: bool) -> tuple[float, float, float]:
    """(scale, sq_norm, norm) from the engine itself."""
    return T.row_stats(np.ascontiguousarray(row, dtype=F32), cosine)


def to_bf16(v: np.ndarray) -> np.ndarray:
    """float32 -> bf16 (as float32) like VCVTNEPS2BF16: round to nearest even, denormals -> 0."""
    v = np.asarray(v, dtype=F32)
    bits = v.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(F32)
    return np.where(np.abs(v) < TINY, F32(0) * v, rounded).astype(F32)


def int8_codes(raw: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """(codes q, step) as the engine's packing_stats_int8 / quantise compute them."""
    v = raw.astype(F32) * F32(scale)
    max_abs = F32(np.max(np.abs(v)))
    step = F32(max_abs / F32(127))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        quant_scale = F32(F32(scale) * F32(F32(127) / max_abs)) if max_abs > 0 else F32(0)
        qf = raw.astype(F32) * quant_scale
        q = np.where(np.abs(qf) < 2.0**31, np.rint(qf), -(2.0**31))  # cvt: out of range -> INT_MIN
    return np.clip(q, -127, 127), float(step)


def packed(raw: np.ndarray, operand: np.ndarray, scale: float, precision: int) -> tuple[np.ndarray, float]:
    """The packed operand (float64, exact) and, for int8, the row's step."""
    if precision == FP32:
        return operand.astype(np.float64), 1.0
    if precision == BF16:
        return to_bf16(operand).astype(np.float64), 1.0
    q, step = int8_codes(raw, scale)
    return q * step, step


def orders(terms: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Summation orders of one row of terms, including the ones that maximise partial sums."""
    d = len(terms)
    return [
        np.arange(d), np.arange(d)[::-1], np.argsort(-np.abs(terms), kind="stable"),
        np.argsort(np.abs(terms), kind="stable"), np.argsort(-terms, kind="stable"),
        np.argsort(terms, kind="stable"), rng.permutation(d), rng.permutation(d),
    ]


def fp32_sums(terms: np.ndarray, fused: bool, flush: bool) -> np.ndarray:
    """Sequential float32 sums of each row of terms [rows, d] (float64, exact products).

    fused: each step rounds once (FMA; emulated through float64, whose extra rounding is far
    inside the bounds' slack); else products round to float32 first. flush: results below the
    normal range become 0 (FTZ, as VDPBF16PS).
    """
    acc = np.zeros(terms.shape[0], dtype=F32)
    products = terms.astype(F32)
    for t in range(terms.shape[1]):
        acc = (acc.astype(np.float64) + terms[:, t]).astype(F32) if fused else acc + products[:, t]
        if flush:
            acc = np.where(np.abs(acc) < TINY, F32(0), acc)
    return acc


def tile_values(xp, yp, precision, steps, rng) -> np.ndarray:
    """Every emulated tile value for one pair of packed operands (float64 arrays)."""
    if precision == INT8:
        codes = int(np.dot((xp / steps[0]).round().astype(np.int64), (yp / steps[1]).round().astype(np.int64)))
        s = F32(codes)
        with np.errstate(over="ignore", under="ignore"):
            return np.array([F32(F32(s * F32(steps[0])) * F32(steps[1])),
                             F32(F32(s * F32(steps[1])) * F32(steps[0]))])
    terms = xp * yp
    batch = np.stack([terms[o] for o in orders(terms, rng)])
    if precision == BF16:
        flushed = np.where(np.abs(batch) < TINY, 0.0, batch)  # products flushed before the add
        return np.concatenate([fp32_sums(batch, True, True), fp32_sums(flushed, True, True)])
    return np.concatenate([fp32_sums(batch, True, False), fp32_sums(batch, False, False)])


def true_dot(a: np.ndarray, b: np.ndarray) -> float:
    return math.fsum((a.astype(np.float64) * b.astype(np.float64)).tolist())


def true_sqdist(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)  # a^2, b^2, ab exact in float64
    return math.fsum(np.concatenate([a * a, b * b, -2 * a * b]).tolist())


# ---- the attack ------------------------------------------------------------------------------


def underflow(roundings: int) -> float:
    """What gradual underflow may add to n fp32 roundings beyond the relative bounds: 2^-150 each
    (tile_windows.h leaves it, and any flush to zero, to the window's absolute 1e-30)."""
    return (roundings + 4) * 2.0**-150


def norm_above(v: np.ndarray) -> float:
    """A float64 upper bound on |v| (exact sum of squares, square root nudged up)."""
    v = v.astype(np.float64)
    return math.sqrt(math.fsum((v * v).tolist())) * (1 + 2.0**-50)


def attack(kind, d, metric, precision, rng) -> float:
    """Checks every bound on PAIRS pairs; returns the largest |tile - true| / tile_error seen.

    The bounds are checked with exact operand norms (the maths) and, as the engine uses them,
    with the norms the engine records (float64 sums, within ~d 2^-53 of the truth; the window's
    relative margin of 1e-6 absorbs that): the final check is |key error| <= window / 2.
    """
    x, y = rows(kind, rng, d)
    cosine = metric == "cosine"
    worst = 0.0
    for i in range(PAIRS):
        sx, sqn_x, ax = stats(x[i], cosine)
        sy, sqn_y, ay = stats(y[i], cosine)
        if cosine and not (sqn_x >= 1e-30 and sqn_y >= 1e-30):
            continue  # the engine rejects such rows
        ox = x[i] * F32(sx)  # the fp32 operands, rounded as the engine rounds them
        oy = y[i] * F32(sy)
        true_ax, true_ay = norm_above(ox), norm_above(oy)
        # The recorded norm bounds the operand's (cosine: with its own 1e-6 margin; otherwise
        # up to the float64 rounding the window's margin covers).
        slack = 1.0 if cosine else 1 - 1e-12
        assert ax >= true_ax / (1 + 2.0**-50) * slack and ay >= true_ay / (1 + 2.0**-50) * slack
        px, step_x = packed(x[i], ox, sx, precision)
        py, step_y = packed(y[i], oy, sy, precision)
        if precision == FP32:
            exact_norms = (true_ax, true_ax, 0.0), (true_ay, true_ay, 0.0)
            engine_norms = (ax, ax, 0.0), (ay, ay, 0.0)
        else:
            pe_x = norm_above(px), norm_above(px - ox)
            pe_y = norm_above(py), norm_above(py - oy)
            exact_norms = (true_ax, *pe_x), (true_ay, *pe_y)
            engine_norms = (ax, *pe_x), (ay, *pe_y)
        dpad = -(-d // GROUP[precision]) * GROUP[precision]
        where = f"{kind} d={d} {metric} precision={precision} pair={i}"

        dot = true_dot(ox, oy)
        tiles = tile_values(px, py, precision, (step_x, step_y), rng).astype(np.float64)
        bound = T.tile_error(precision, dpad, *exact_norms)
        err = float(np.max(np.abs(tiles - dot)))
        assert err <= bound + underflow(dpad), f"tile bound broken: {where}: {err} > {bound}"
        worst = max(worst, err / bound)

        exact = float(T.exact_scores(x[i], y[i : i + 1], METRIC[metric], sx, np.array([sy], F32))[0])
        truth = true_sqdist(ox, oy) if metric == "l2" else dot
        bound = T.exact_error(METRIC[metric], d, true_ax, true_ay)
        assert abs(exact - truth) <= bound + underflow(d), \
            f"exact bound broken: {where}: {abs(exact - truth)} > {bound}"

        if metric == "l2":  # the scan's key: 2 tile - (|x|^2 + |y|^2), in float32
            t32 = tiles.astype(F32)
            keys = (t32 + t32) - (F32(sqn_x) + F32(sqn_y))
            exact_key = -exact
        else:
            keys, exact_key = tiles, exact
        err = float(np.max(np.abs(keys.astype(np.float64) - exact_key)))
        bound = T.key_error(METRIC[metric], precision, d, dpad, *exact_norms)
        assert err <= bound + underflow(2 * d + 8), f"key bound broken: {where}: {err} > {bound}"
        window = T.key_window(METRIC[metric], precision, d, dpad, *engine_norms)
        assert window == F32(window) and err <= window / 2, f"window broken: {where}: {err} > {window} / 2"
    return worst


@pytest.mark.parametrize("precision", [FP32, BF16, INT8], ids=["fp32", "bf16", "int8"])
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_adversarial_pair_breaks_the_bounds(rng, kind, metric, precision):
    # The engine's exact score and row statistics come from its default table here (every table
    # gives the same bits; test_knn_engine.py checks that).
    for d in DIMS:
        attack(kind, d, metric, precision, rng)


def layer(kind: str, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """One adversarial layer [1, n, d] for the whole engine."""
    if kind == "massive_features":
        x = rng.standard_normal((n, d))
        x[:, rng.choice(d, 2, replace=False)] *= 1e5
    elif kind == "dynamic_range":
        x = rng.choice([-1, 1], (n, d)) * 10.0 ** rng.uniform(-30, 12, (n, d))
    elif kind == "near_ties":  # every row within 1e-4 of one centre: windows hold many rows
        x = rng.standard_normal(d) + 1e-4 * rng.standard_normal((n, d))
    elif kind == "tiny":
        x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-40, -20, (n, d))
        x[:, 0] = rng.choice([-1, 1], n) * 1e-5
    else:
        raise AssertionError(kind)
    return np.asarray(x, dtype=F32)[None]


def brute_force(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top k of every row by the engine's own exact score over all rows, with the tie rule."""
    rows_ = x[0]
    n = rows_.shape[0]
    scales = np.array([stats(r, metric == "cosine")[0] for r in rows_], dtype=F32)
    indices = np.empty((1, n, k), np.int32)
    scores = np.empty((1, n, k), F32)
    for i in range(n):
        s = T.exact_scores(rows_[i], rows_, METRIC[metric], scales[i], scales)
        key = -s if metric == "l2" else s.copy()
        key[i] = -np.inf
        order = np.lexsort((np.arange(n), -key.astype(np.float64)))[:k]
        indices[0, i], scores[0, i] = order, s[order]
    return indices, scores


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", ["massive_features", "dynamic_range", "near_ties", "tiny"])
def test_engine_equals_brute_force_on_adversarial_layers(level, rng, kind, metric):
    # If a window dropped a true top-k candidate, the engine's answer would differ from the
    # brute force over its own exact score, bit for bit.
    x = layer(kind, rng, 403, 37)
    for k in (1, 10):
        got = _core.knn_cpu(x, None, k, METRIC[metric], True, 2)
        want = brute_force(x, k, metric)
        assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


def test_the_staircase_nearly_reaches_the_fp32_tile_bound(rng):
    # The bound is not vacuous: a tenth of it would be broken by this input.
    worst = attack("staircase", 4097, "ip", FP32, rng)
    assert 0.1 < worst <= 1.0


def test_a_lane_staircase_nearly_reaches_the_exact_bound(rng):
    # The exact score's bound counts ceil(d/16) + 4 roundings per product (its 16 lanes and
    # halving tree), not d: a staircase in every lane must still come within a tenth of it.
    d = 16 * 257
    x = np.repeat(staircase(257), 16).astype(F32)  # lane l sees the staircase in order
    y = np.ones(d, dtype=F32)
    exact = float(T.exact_scores(x, y[None], METRIC["ip"], F32(1), np.array([1], F32))[0])
    err = abs(exact - true_dot(x, y))
    bound = T.exact_error(METRIC["ip"], d, norm_above(x), norm_above(y))
    assert 0.1 < err / bound <= 1.0


def test_windows_grow_with_every_norm():
    # Maxima over database rows are only safe because every bound is monotone in each norm.
    base = (1.0, 1.1, 0.01)
    for metric in METRIC.values():
        for precision in (FP32, BF16, INT8):
            ref = T.key_error(metric, precision, 300, 300, base, base)
            for which in range(3):
                bigger = tuple(v * 2 if j == which else v for j, v in enumerate(base))
                assert T.key_error(metric, precision, 300, 300, bigger, base) >= ref
                assert T.key_error(metric, precision, 300, 300, base, bigger) >= ref
            assert T.key_error(metric, precision, 301, 304, base, base) >= ref


def test_window_is_a_float_at_least_twice_the_bound():
    for d in (1, 7, 4096, 100_000):
        for metric in METRIC.values():
            for precision in (FP32, BF16, INT8):
                norms = (3.5, 3.6, 0.02)
                bound = T.key_error(metric, precision, d, d, norms, norms)
                window = T.key_window(metric, precision, d, d, norms, norms)
                assert window >= 2 * bound * (1 + 1e-6) and np.isfinite(window)
                assert float(np.nextafter(F32(window), F32(0))) < 2 * bound * (1 + 1e-6) + 1e-30


def test_bad_codes_are_value_errors():
    with pytest.raises(ValueError, match="precision must be"):
        T.tile_error(3, 10, (1, 1, 0), (1, 1, 0))
    with pytest.raises(ValueError, match="metric must be"):
        T.exact_error(5, 10, 1, 1)


def test_cost_model_choice():
    # pass_rows 1000, k 10, budget 40: int8 GEMM = 250 + 4 c, bf16 = 500 + 4 c, fp32 = 1000 + 40.
    pick = T.cheapest_precision
    assert pick(1000, 10, 40, []) == FP32
    assert pick(1000, 10, 40, [(INT8, 12), (BF16, 11)]) == INT8
    assert pick(1000, 10, 40, [(INT8, 41), (BF16, 11)]) == BF16  # int8 over its list budget
    assert pick(1000, 10, 40, [(INT8, 41), (BF16, 41)]) == FP32
    assert pick(100, 10, 400, [(INT8, 300), (BF16, 300)]) == FP32  # re-scoring costs too much
    assert pick(1000, 10, 400, [(INT8, 200), (BF16, 20)]) == BF16  # 1050 vs 580


def test_cost_model_weighs_candidates_by_the_rescore_cost():
    # int8 at 30 candidates: 250 + 30 r against fp32's 1000 + 10 r, so it pays below r = 37.5.
    pick = T.cheapest_precision
    assert pick(1000, 10, 40, [(INT8, 30)], rescore_cost=4) == INT8
    assert pick(1000, 10, 40, [(INT8, 30)], rescore_cost=37) == INT8
    assert pick(1000, 10, 40, [(INT8, 30)], rescore_cost=38) == FP32


def test_rescore_cost_is_measured_once_within_its_clamp():
    first = T.rescore_cost()
    assert 1.0 <= first <= 64.0
    assert T.rescore_cost() == first  # measured once per process
