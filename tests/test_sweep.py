"""layerknn.sweep_k: every k from one search equals a separate compare at that k, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import layerknn


def test_each_k_equals_a_separate_compare(rng, tmp_path):
    base = rng.standard_normal((70, 10))
    a = np.stack([base + 0.5 * rng.standard_normal(base.shape) for _ in range(4)]).astype(np.float32)
    b = np.stack([base + 0.5 * rng.standard_normal(base.shape) for _ in range(3)]).astype(np.float32)
    a[1, 40:] = a[1, 0]  # duplicate prompts: ties at the k-th neighbour
    sweep = layerknn.sweep_k(a, b, ks=(10, 1, 3, 3, 69 - 1), bootstrap=30, permutations=8, seed=2)
    assert sorted(sweep) == [1, 3, 10, 68]
    for k, got in sweep.items():
        ref = layerknn.compare(a, b, k=k, bootstrap=30, permutations=8, seed=2)
        np.testing.assert_array_equal(got.matrix, ref.matrix)
        np.testing.assert_array_equal(got.per_prompt, ref.per_prompt)
        np.testing.assert_array_equal(got.p_values, ref.p_values)
        np.testing.assert_array_equal(got.tie_rate_a, ref.tie_rate_a)
        np.testing.assert_array_equal(got.ci["matrix_low"], ref.ci["matrix_low"])
        assert got.ci["stats"] == ref.ci["stats"] and got.k == k
    from layerknn.plot import k_sweep

    assert k_sweep(sweep, tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_ks(rng):
    a = rng.standard_normal((3, 20, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="k must be in"):
        layerknn.sweep_k(a, a, ks=(1, 20))
    with pytest.raises(TypeError, match="ks must be a sequence"):
        layerknn.sweep_k(a, a, ks=5)
    with pytest.raises(TypeError, match="k must be an integer"):
        layerknn.sweep_k(a, a, ks=(1, 2.5))
    with pytest.raises(ValueError, match="at least one"):
        layerknn.sweep_k(a, a, ks=())
