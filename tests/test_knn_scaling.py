"""Inner product and squared L2 on rows too large (or too small) for float32 arithmetic.

The engines' float32 intermediates overflow for row norms beyond ~2^64 (squared norms,
|x|^2 + |y|^2 - 2 x.y, candidate windows) although the inputs are finite float32; such layers
are rescaled by a power of two (layerknn._scaling), which is exactly rank-preserving, and scores
that float32 cannot hold raise ValueError. Each case here returned NaN/Inf scores and wrong
indices before that.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

import layerknn
from conftest import on_device, to_numpy
from layerknn import _backend, _scaling
from reference import assert_neighbors_exact, reference_knn


def gaussian(rng, shape, scale):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_scores_beyond_float32_raise_naming_layer_and_magnitude(device, rng, metric):
    x = np.stack([gaussian(rng, (200, 64), 1.0), gaussian(rng, (200, 64), 1e20)])
    with pytest.raises(ValueError, match=r"x is too large for .* layer 1 has scores up to [0-9.]+e\+4\d.*cosine"):
        layerknn.knn(on_device(x, device), k=3, metric=metric)


def test_cosine_of_huge_rows_is_unaffected(device, rng):
    x = gaussian(rng, (1, 200, 64), 1e20)
    nbrs = layerknn.knn(on_device(x, device), k=3, metric="cosine")
    assert_neighbors_exact(to_numpy(nbrs.indices), to_numpy(nbrs.scores), x, 3, "cosine")


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_1e18_rows_are_exact(device, rng, metric):
    # Scores up to ~1e38 still fit float32; norms ~8e18 > 2^60 take the rescaled path.
    x = gaussian(rng, (2, 200, 64), 1e18)
    nbrs = layerknn.knn(on_device(x, device), k=3, metric=metric)
    expected, _ = reference_knn(x, 3, metric)
    np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)
    assert np.isfinite(to_numpy(nbrs.scores)).all()
    assert_neighbors_exact(to_numpy(nbrs.indices), to_numpy(nbrs.scores), x, 3, metric)


def test_l2_between_huge_nearby_rows_is_exact(device, rng):
    # Norms ~1e20 (squared norms overflow float32) but distances ~1e31 fit: the old
    # |x|^2 + |y|^2 - 2 x.y tiles gave Inf keys and arbitrary neighbours.
    centre = gaussian(rng, (1, 1, 16), 1e20)
    x = (centre + gaussian(rng, (1, 150, 16), 1e15)).astype(np.float32)
    nbrs = layerknn.knn(on_device(x, device), k=4, metric="l2")
    expected, ref_scores = reference_knn(x, 4, "l2")
    np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)
    np.testing.assert_allclose(to_numpy(nbrs.scores), ref_scores, rtol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_power_of_two_scaling_is_exact(device, rng, metric):
    # knn(x * 2^s) must equal knn(x) with scores times 2^(2s), to the bit, on both sides of the
    # float32-safe range: the rescaling undoes the factor exactly. (At s = -70 the products
    # ~2^-140 are subnormal; scores come back as the correctly rounded subnormals.)
    x = gaussian(rng, (2, 120, 24), 1.0)
    base = layerknn.knn(on_device(x, device), k=5, metric=metric)
    for s in (60, -40, -70):
        scaled = layerknn.knn(on_device(np.ldexp(x, s), device), k=5, metric=metric)
        np.testing.assert_array_equal(to_numpy(scaled.indices), to_numpy(base.indices))
        np.testing.assert_array_equal(to_numpy(scaled.scores), np.ldexp(to_numpy(base.scores), 2 * s))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_tiny_rows_are_ranked_exactly(device, rng, metric):
    # Products ~1e-60 underflow float32: unscaled, every score was 0 and ties broke by index.
    x = gaussian(rng, (1, 150, 16), 1e-30)
    nbrs = layerknn.knn(on_device(x, device), k=3, metric=metric)
    expected, _ = reference_knn(x, 3, metric)
    np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)


def test_cross_form_scales_x_and_y_separately_for_ip(device, rng):
    # x ~ 1e25 and y ~ 1e-22: scores ~1e4 are ordinary, norms are not.
    x = gaussian(rng, (2, 40, 12), 1e25)
    y = gaussian(rng, (2, 70, 12), 1e-22)
    nbrs = layerknn.knn(on_device(x, device), k=5, metric="ip", y=on_device(y, device))
    expected, _ = reference_knn(x, 5, "ip", y=y)
    np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)
    assert_neighbors_exact(to_numpy(nbrs.indices), to_numpy(nbrs.scores), x.astype(np.float64) * 1e-25, 5, "ip",
                           y=y.astype(np.float64) * 1e25)


def test_cross_form_l2(device, rng):
    x = gaussian(rng, (1, 40, 12), 1e18)
    y = gaussian(rng, (1, 60, 12), 1e18)
    nbrs = layerknn.knn(on_device(x, device), k=5, metric="l2", y=on_device(y, device))
    expected, _ = reference_knn(x, 5, "l2", y=y)
    np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)
    with pytest.raises(ValueError, match=r"x and y are too large for l2 scores in float32: layer 0"):
        layerknn.knn(on_device(x, device), k=5, metric="l2", y=on_device(y * np.float32(100), device))


def test_plan_is_per_layer_and_per_metric():
    sq = np.array([[1.0, 4.0], [2.0**140, 1.0], [0.0, 0.0], [2.0**-70, 0.0]])  # norms 2, 2^70, 0, 2^-35
    p = _scaling.plan("ip", sq)
    assert p.x_exp.tolist() == [0, 71, 0, -34] and p.y_exp is None
    assert p.score_exp.tolist() == [0, 142, 0, -68]
    assert _scaling.plan("cosine", sq) is None
    assert _scaling.plan("l2", sq[[0, 2]]) is None
    y_sq = np.array([[2.0**-80], [1.0], [1.0], [1.0]])  # norms 2^-40, 1, 1, 1
    ip = _scaling.plan("ip", sq, y_sq)
    assert ip.y_exp.tolist() == [-39, 0, 0, 0] and ip.score_exp.tolist() == [-39, 71, 0, -34]
    l2 = _scaling.plan("l2", sq, y_sq)
    assert l2.x_exp.tolist() == l2.y_exp.tolist() == [0, 71, 0, 0]


def test_torch_path_with_norms_known_up_front(rng):
    # What the CUDA path does (norms computed before dispatch), exercised with CPU tensors.
    x = torch.from_numpy(gaussian(rng, (2, 90, 16), 1e18))

    def run(xs, ys):
        indices, scores = _backend.knn(xs.numpy(), None, 4, "ip", True)
        return torch.from_numpy(indices), torch.from_numpy(scores)

    known = (_backend.row_sq_norms(x.numpy()), None)
    indices, scores = _scaling.safe_knn(run, x, None, "ip", lambda: known, known)
    expected = layerknn.knn(x.numpy(), 4, metric="ip")
    np.testing.assert_array_equal(indices.numpy(), expected.indices)
    np.testing.assert_array_equal(scores.numpy(), expected.scores)
    with pytest.raises(ValueError, match="too large"):
        big = x * 100
        known = (_backend.row_sq_norms(big.numpy()), None)
        _scaling.safe_knn(run, big, None, "ip", lambda: known, known)
