"""layerknn.alignment.monotone_path against brute force over every non-decreasing path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from layerknn.alignment import monotone_path


def brute_force(m):
    """Every non-decreasing column sequence, in lexicographic order; the first best one wins."""
    R, C = m.shape
    best, best_path = -np.inf, None
    for path in itertools.combinations_with_replacement(range(C), R):
        total = m[np.arange(R), path].sum()
        if total > best:
            best, best_path = total, path
    return np.array(best_path), best


def test_matches_brute_force_with_ties(rng):
    for trial in range(300):
        R, C = (int(x) for x in rng.integers(1, 6, size=2))
        if trial % 2:
            m = rng.integers(0, 3, size=(R, C)).astype(float)  # integers: many exactly tied paths
        else:
            m = rng.random((R, C))
        res = monotone_path(m)
        path, total = brute_force(m)
        np.testing.assert_array_equal(res["path"], path)
        assert res["total"] == pytest.approx(total, rel=1e-12)
        assert res["score"] == pytest.approx(total / R, rel=1e-12)
        assert np.all(np.diff(res["path"]) >= 0)


def test_batched_equals_loop(rng):
    batch = rng.integers(0, 4, size=(3, 5, 6, 4)).astype(float)
    res = monotone_path(batch)
    assert res["path"].shape == (3, 5, 6) and res["score"].shape == (3, 5)
    for idx in np.ndindex(3, 5):
        one = monotone_path(batch[idx])
        np.testing.assert_array_equal(res["path"][idx], one["path"])
        assert res["score"][idx] == one["score"]


def test_monotone_matrix_gives_best_matches_and_diagonal(rng):
    m = np.eye(6) + 0.01 * rng.random((6, 6))
    np.testing.assert_array_equal(monotone_path(m)["path"], np.arange(6))
    # when the per-row argmax is already non-decreasing, the path is that argmax
    m = rng.random((7, 4))
    m[np.arange(7), [0, 0, 1, 2, 2, 3, 3]] += 2
    np.testing.assert_array_equal(monotone_path(m)["path"], [0, 0, 1, 2, 2, 3, 3])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., R, C\) with R, C >= 1, got \(3,\)"):
        monotone_path(np.ones(3))
    with pytest.raises(ValueError, match="got \\(0, 3\\)"):
        monotone_path(np.ones((0, 3)))
    with pytest.raises(ValueError, match="finite"):
        monotone_path(np.array([[1.0, np.inf]]))
