"""Attacks on the window of the CPU engine's centred, outlier-split int8 and bf16 tiles
(csrc/cpu/tile_split.h, split_tile_error in csrc/cpu/tile_windows.h).

Such a tile approximates <z_x, z_y> + |mu|^2 (z = fl(x * scale), mu the layer's centre) as
((Q + b_x) + b_y) + sum_s v_x,s v_y,s in float32: Q the int8 or bf16 tile of the centred rest
w = fl(z - mu) with the split-off features zeroed, b = the engine's exact-kernel shift <z, mu>,
v the split-off values fl(z - mu). On activation-like layers (a large shared mean, a few massive
features, near-duplicates) and on the kinds of tests/test_windows.py, with the engine's own centre
and split and with arbitrary ones (the bound must not depend on how they were chosen), the test
emulates that tile in NumPy in several summation variants and asserts
|tile - (<z_x, z_y> + |mu|^2)| <= split_tile_error and |tile - |mu|^2 - exact| <= window / 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerknn import _core
from test_windows import (BF16, FP32, INT8, METRIC, TINY, int8_codes, norm_above, stats, tile_values, to_bf16, true_dot,
                          underflow)

T = _core._testing
F32 = np.float32
KINDS = ["activations", "massive_features", "dynamic_range", "cancellation", "tiny", "near_duplicates"]


def layer(kind: str, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n float32 rows of d features of one adversarial kind."""
    if kind == "activations":  # shared mean, low rank, a few massive features of either sign
        mean = rng.standard_normal(d) * 2
        x = mean + rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + 0.3 * rng.standard_normal((n, d))
        hot = rng.choice(d, size=min(d, 3), replace=False)
        x[:, hot] *= rng.uniform(30, 300, len(hot))
    elif kind == "massive_features":  # more massive features than split off, 1e6 times the rest
        x = rng.standard_normal((n, d))
        x[:, rng.choice(d, size=min(d, 20), replace=False)] *= 1e6
    elif kind == "dynamic_range":
        x = rng.choice([-1, 1], (n, d)) * 10.0 ** rng.uniform(-30, 12, (n, d))
    elif kind == "cancellation":  # mean far larger than the spread: z - mu cancels
        x = 1e4 + rng.standard_normal((n, d))
    elif kind == "tiny":
        x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-44, -36, (n, d))
        x[:, 0] = 1e-3
    elif kind == "near_duplicates":
        x = rng.standard_normal(d) + 1e-5 * rng.standard_normal((n, d))
        x[1] = x[0]
    else:
        raise AssertionError(kind)
    return np.asarray(x, dtype=F32)


def int8_tiles(q_x, q_y, step_x, step_y) -> list:
    """Q of int8 codes in its float32 variants: exact code sums, both scaling orders."""
    codes = F32(int(np.dot(q_x.astype(np.int64), q_y.astype(np.int64))))
    with np.errstate(over="ignore", under="ignore"):
        return [F32(F32(codes * F32(step_x)) * F32(step_y)), F32(F32(codes * F32(step_y)) * F32(step_x))]


def split_tiles(q_x, q_y, step_x, step_y, b_x, b_y, v_x, v_y) -> np.ndarray:
    """The emulated split tile of int8 codes in its float32 variants (see split_terms)."""
    return split_terms(int8_tiles(q_x, q_y, step_x, step_y), b_x, b_y, v_x, v_y)


def split_terms(tiles, b_x, b_y, v_x, v_y) -> np.ndarray:
    """Each variant of Q plus the split terms: products of v rounded or fused into the add, the
    split terms in natural and reversed order."""
    out = []
    with np.errstate(over="ignore", under="ignore"):
        for q in tiles:
            for order in (slice(None), slice(None, None, -1)):
                t = F32(F32(q + F32(b_y)) + F32(b_x))
                fused = t
                for a, b in zip(v_x[order], v_y[order]):
                    t = F32(t + F32(a * b))
                    fused = F32(float(fused) + float(a) * float(b))
                out += [t, fused]
    return np.array(out, dtype=np.float64)


def attack(kind: str, d: int, metric: str, rng: np.random.Generator, arbitrary: bool, precision: int = INT8) -> float:
    """Checks the bounds on every pair of a small layer; returns the largest error / bound."""
    n = 5
    x = layer(kind, rng, n, d)
    cosine = metric == "cosine"
    st = [stats(r, cosine) for r in x]
    if cosine and not all(s[1] >= 1e-30 for s in st):
        return 0.0  # the engine rejects such rows
    scales = np.array([s[0] for s in st], dtype=F32)
    z = x * scales[:, None]  # the fp32 operands, rounded as the engine rounds them
    m = T.split_width(d)
    mu, cols, mu_norm, _ = T.choose_split(x, scales, m)
    if arbitrary:  # any centre and any split must be safe
        mu = (z[rng.integers(n)] * F32(rng.uniform(0.5, 1.5))).astype(F32)
        cols = sorted(rng.choice(d, size=m, replace=False).tolist())
        mu_norm = math.sqrt(math.fsum((mu.astype(np.float64) ** 2).tolist()))
    keep = np.ones(d, bool)
    keep[list(cols)] = False
    centred = (z - mu).astype(F32)
    w = np.where(keep, centred, F32(0))
    v = centred[:, list(cols)]
    c = norm_above(mu)
    assert abs(mu_norm - c) <= 1e-12 * c  # a float64 sum: the window's margin of 1e-6 covers it
    shifts = T.exact_scores(mu, x, METRIC["ip"], F32(1), scales)
    codes = [int8_codes(row, 1.0) if precision == INT8 else (to_bf16(row) if precision == BF16 else row, 1.0)
             for row in w]
    dpad = d + d % 2 if precision == BF16 else d  # bf16 pairs (AMX pads further: a wider bound)
    worst = 0.0
    for i in range(n):
        for j in range(n):
            qx, step_x = codes[i]
            qy, step_y = codes[j]
            px, py = qx.astype(np.float64) * step_x, qy.astype(np.float64) * step_y
            nx = (st[i][2], norm_above(px), norm_above(px - w[i]))
            ny = (st[j][2], norm_above(py), norm_above(py - w[j]))
            exact_nx = (norm_above(z[i]), *nx[1:])
            exact_ny = (norm_above(z[j]), *ny[1:])
            sx, sy = norm_above(v[i]), norm_above(v[j])
            q = int8_tiles(qx, qy, step_x, step_y) if precision == INT8 else tile_values(px, py, precision, None, rng)
            tiles = split_terms(q, shifts[i], shifts[j], v[i], v[j])
            c2 = math.fsum((mu.astype(np.float64) ** 2).tolist())
            truth = true_dot(z[i], z[j]) + c2
            bound = T.split_tile_error(d, m, c, exact_nx, exact_ny, sx, sy, precision=precision, dpad=dpad)
            err = float(np.max(np.abs(tiles - truth)))
            where = f"{kind} d={d} {metric} arbitrary={arbitrary} pair=({i}, {j})"
            assert err <= bound + underflow(m + 4), f"split tile bound broken: {where}: {err} > {bound}"
            worst = max(worst, err / bound)
            exact = float(T.exact_scores(x[i], x[j : j + 1], METRIC[metric], scales[i], scales[j : j + 1])[0])
            key_err = float(np.max(np.abs(tiles - c2 - exact)))
            window = T.split_key_window(METRIC[metric], d, m, mu_norm, nx, ny, sx, sy, precision=precision, dpad=dpad)
            assert window == F32(window) and key_err <= window / 2, f"window broken: {where}: {key_err} > {window} / 2"
    return worst


@pytest.mark.parametrize("arbitrary", [False, True], ids=["engine_split", "arbitrary_split"])
@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_adversarial_layer_breaks_the_split_bounds(rng, kind, metric, arbitrary):
    for d in (1, 17, 64, 255, 1031):
        attack(kind, d, metric, rng, arbitrary)


@pytest.mark.parametrize("arbitrary", [False, True], ids=["engine_split", "arbitrary_split"])
@pytest.mark.parametrize("precision", [BF16, FP32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_adversarial_layer_breaks_the_float_split_bounds(rng, kind, precision, arbitrary):
    # bf16 or fp32 operands of the centred rest, summed in eight orders (fused and not, with and
    # without bf16's flushes).
    for d in (1, 17, 64, 255):
        attack(kind, d, "cosine", rng, arbitrary, precision=precision)


def test_a_bf16_split_bound_is_wider_than_int8s_accumulation_alone():
    # Same norms: the bf16 tile sums dpad rounded products, int8 codes sum exactly.
    norms = (1.0, 1.0, 0.0)
    assert T.split_tile_error(300, 0, 0.0, norms, norms, 0.0, 0.0, precision=BF16, dpad=300) > \
        T.split_tile_error(300, 0, 0.0, norms, norms, 0.0, 0.0)
    assert T.split_tile_error(300, 0, 0.0, norms, norms, 0.0, 0.0, precision=FP32, dpad=300) == \
        T.split_tile_error(300, 0, 0.0, norms, norms, 0.0, 0.0, precision=BF16, dpad=300)
    with pytest.raises(ValueError, match="precision must be"):
        T.split_tile_error(300, 0, 0.0, norms, norms, 0.0, 0.0, precision=3)


def test_the_split_bound_is_nearly_reached():
    # x's codes drop every 0.5 (round half to even) and y lies along that error: the
    # quantisation term e_x (p_y + e_y) is met with equality, so a bound made tighter (wrong)
    # would be caught. mu = 0, nothing split off (d < 16).
    d = 15
    x = np.full(d, 0.5, F32)
    x[0] = 127
    y = np.full(d, 127, F32)
    y[0] = 0
    qx, step_x = int8_codes(x, 1.0)
    qy, step_y = int8_codes(y, 1.0)
    assert step_x == 1.0 and step_y == 1.0 and qx[1:].max() == 0
    tiles = split_tiles(qx, qy, step_x, step_y, F32(0), F32(0), np.zeros(0, F32), np.zeros(0, F32))
    err = float(np.max(np.abs(tiles - true_dot(x, y))))
    norms_x = (norm_above(x), norm_above(qx * step_x), norm_above(qx * step_x - x))
    norms_y = (norm_above(y), norm_above(y), 0.0)
    bound = T.split_tile_error(d, 0, 0.0, norms_x, norms_y, 0.0, 0.0)
    assert 0.99 < err / bound <= 1.0


def test_choose_split_takes_the_centre_and_the_most_outlying_features(rng):
    x = layer("activations", rng, 200, 96)
    x[:, [7, 40]] *= 1e3  # the two most outlying features
    scales = np.ones(200, F32)
    mu, cols, mu_norm, outlying = T.choose_split(x, scales, 6)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    deviation = np.abs(x.astype(np.float64) - mu).max(0)
    want = np.sort(np.argsort(-deviation, kind="stable")[:6])
    assert list(cols) == want.tolist() and {7, 40} <= set(cols)
    assert mu_norm == pytest.approx(np.linalg.norm(mu.astype(np.float64)))
    assert outlying == pytest.approx(deviation.max() / np.sort(deviation)[48], rel=1e-6)  # upper median
    assert T.split_width(15) == 0 and T.split_width(64) == 4 and T.split_width(4096) == 16


def test_split_windows_grow_with_every_norm():
    base = dict(x=(1.0, 0.4, 0.01), y=(1.0, 0.4, 0.01), c=0.8, sx=0.3, sy=0.3)
    ref = T.split_tile_error(300, 16, base["c"], base["x"], base["y"], base["sx"], base["sy"])
    for which in range(3):
        bigger = tuple(v * 2 if k == which else v for k, v in enumerate(base["x"]))
        assert T.split_tile_error(300, 16, base["c"], bigger, base["y"], base["sx"], base["sy"]) >= ref
        assert T.split_tile_error(300, 16, base["c"], base["y"], bigger, base["sx"], base["sy"]) >= ref
    assert T.split_tile_error(300, 16, 1.6, base["x"], base["y"], base["sx"], base["sy"]) >= ref
    assert T.split_tile_error(300, 16, base["c"], base["x"], base["y"], 0.6, base["sy"]) >= ref
    assert T.split_tile_error(300, 17, base["c"], base["x"], base["y"], base["sx"], base["sy"]) >= ref
    with pytest.raises(ValueError, match="metric must be"):
        T.split_key_window(METRIC["l2"], 300, 16, 0.8, base["x"], base["y"], 0.3, 0.3)


def test_tiny_products_stay_inside_the_absolute_margin():
    # Products of split-off values below the normal range round absolutely, not relatively.
    assert T.split_tile_error(10, 4, 0.0, (TINY, 0.0, 0.0), (TINY, 0.0, 0.0), TINY, TINY) >= 1e-30
