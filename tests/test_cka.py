"""layerknn.cka: the textbook formula, invariances, the debiased estimator's null, chunking, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import layerknn


def textbook_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from centred features: ||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F) in float64."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), written out term by term with loops over the zero-diagonal Grams."""
    n = k.shape[0]
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    ones = np.ones(n)
    term1 = np.trace(k @ l_)
    term2 = (ones @ k @ ones) * (ones @ l_ @ ones) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (ones @ k @ l_ @ ones)
    return (term1 + term2 - term3) / (n * (n - 3))


def test_matches_the_textbook_formula(rng):
    a = rng.standard_normal((3, 40, 7))
    b = rng.standard_normal((2, 40, 5)) + 0.5 * a[:2, :, :5]
    got = layerknn.cka(a.astype(np.float32), b.astype(np.float32))
    want = np.array([[textbook_cka(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_debiased_matches_the_unbiased_hsic(rng):
    a = rng.standard_normal((2, 25, 4))
    b = rng.standard_normal((3, 25, 6))
    got = layerknn.cka(a, b, debiased=True)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            k, l_ = x @ x.T, y @ y.T
            want = unbiased_hsic(k, l_) / np.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l_, l_))
            assert got[i, j] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_invariant_to_rotation_and_isotropic_scaling(rng):
    x = rng.standard_normal((1, 60, 8))
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    y = 7.5 * x @ q
    for debiased in (False, True):
        m = layerknn.cka(x, y, debiased=debiased)
        assert m[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_debiased_is_near_zero_for_independent_data_at_small_n(rng):
    a = rng.standard_normal((20, 32, 16))
    b = rng.standard_normal((20, 32, 16))
    biased = np.diag(layerknn.cka(a, b))
    debiased = np.diag(layerknn.cka(a, b, debiased=True))
    assert biased.mean() > 0.3  # the biased estimator is inflated by width at small n
    assert abs(debiased.mean()) < 0.05 and np.abs(debiased).max() < 0.2


def test_chunked_equals_unchunked_and_torch_inputs(rng):
    a = rng.standard_normal((5, 30, 6)).astype(np.float32)
    b = rng.standard_normal((4, 30, 3)).astype(np.float32)
    full = layerknn.cka(a, b)
    tiny = layerknn.cka(torch.from_numpy(a), torch.from_numpy(b), max_bytes=1)  # one layer at a time
    np.testing.assert_allclose(tiny, full, rtol=1e-12, atol=1e-12)


def test_bad_inputs(rng):
    a = rng.standard_normal((2, 10, 3))
    with pytest.raises(ValueError, match="acts_b must have shape"):
        layerknn.cka(a, a[0])
    with pytest.raises(ValueError, match="same prompts"):
        layerknn.cka(a, a[:, :5])
    with pytest.raises(ValueError, match="n >= 4"):
        layerknn.cka(a[:, :3], a[:, :3], debiased=True)
    with pytest.raises(TypeError, match="floating-point"):
        layerknn.cka(np.ones((2, 10, 3), dtype=np.int64), a)
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="acts_a contains NaN"):
        layerknn.cka(bad, a)
