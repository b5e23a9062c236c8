"""Property-based checks of layerknn.stats / layerknn.calibration: bounds and invariances that must
hold for every input, searched by hypothesis (derandomized, so runs are reproducible)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import layerknn
from layerknn import calibration, stats, verdict

SETTINGS = settings(deadline=None, derandomize=True, max_examples=80)


@st.composite
def int_matrices(draw, max_side=8, max_value=6):
    """(matrix of small non-negative integers, La, Lb): counts-like, so tied maxima are common."""
    rows = draw(st.integers(2, max_side))
    cols = draw(st.integers(2, max_side))
    m = draw(hnp.arrays(np.int64, (rows, cols), elements=st.integers(0, max_value)))
    return m.astype(np.float64), rows - 1, cols - 1


@st.composite
def float_matrices(draw, max_side=8):
    rows = draw(st.integers(2, max_side))
    cols = draw(st.integers(2, max_side))
    elements = st.floats(0, 1, allow_nan=False, width=32)
    return draw(hnp.arrays(np.float64, (rows, cols), elements=elements)), rows - 1, cols - 1


@SETTINGS
@given(hnp.arrays(np.float64, st.integers(1, 12), elements=st.integers(-3, 3).map(float)),
       st.integers(0, 2**32 - 1))
def test_spearman_in_bounds_or_nan(x, seed):
    y = np.random.default_rng(seed).integers(0, 3, size=x.size).astype(float)
    rho = stats.spearman(x, y)
    assert np.isnan(rho) or -1 - 1e-12 <= rho <= 1 + 1e-12
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert np.isnan(rho)
    assert stats.spearman(x, x) == 1.0 or np.ptp(x) == 0


@SETTINGS
@given(st.one_of(int_matrices(), float_matrices()), st.booleans())
def test_transpose_swaps_directions_exactly(case, include_embeddings):
    m, La, Lb = case
    s = stats.depth_alignment_stats(m, La, Lb, include_embeddings=include_embeddings)
    t = stats.depth_alignment_stats(m.T, Lb, La, include_embeddings=include_embeddings)
    for ab, ba in (("spearman_ab", "spearman_ba"), ("mean_abs_depth_error_ab", "mean_abs_depth_error_ba"),
                   ("best_ab", "best_ba"), ("best_depth_ab", "best_depth_ba"), ("tied_ab", "tied_ba")):
        np.testing.assert_array_equal(t[ab], s[ba])
        np.testing.assert_array_equal(t[ba], s[ab])
    for key in ("mean_abs_depth_error", "near_mean", "far_mean"):
        np.testing.assert_allclose(t[key], s[key], rtol=1e-12, equal_nan=True)
    for key in ("spearman_ab", "spearman_ba"):
        assert np.isnan(s[key]) or -1 - 1e-12 <= s[key] <= 1 + 1e-12


@SETTINGS
@given(int_matrices(max_value=20), st.integers(1, 50), st.integers(-100, 100), st.integers(2, 10**6),
       st.integers(-8, 8))
def test_best_match_invariant_under_positive_affine_maps(case, scale, shift, nk, power):
    m, _, _ = case
    best, ties = stats.best_match(m), stats.best_match_ties(m)
    # integer affine maps and the totals -> means division are exact and strictly increasing
    for mapped in (scale * m + shift, m / nk, (m / nk) * 2.0**power):
        np.testing.assert_array_equal(stats.best_match(mapped), best)
        np.testing.assert_array_equal(stats.best_match(mapped, ties="highest"), stats.best_match(m, ties="highest"))
        np.testing.assert_array_equal(stats.best_match_ties(mapped), ties)
    # the paper's rule is argmax; "highest" is argmax of the mirrored row
    np.testing.assert_array_equal(best, np.argmax(m, axis=-1))
    np.testing.assert_array_equal(stats.best_match(m, ties="highest"), m.shape[1] - 1 - np.argmax(m[:, ::-1], -1))
    assert np.all(ties == (stats.best_match(m) != stats.best_match(m, ties="highest")))


@SETTINGS
@given(st.integers(1, 6), st.integers(2, 25), st.integers(1, 40), st.integers(0, 2**32 - 1),
       st.floats(0.5, 0.99))
def test_bootstrap_intervals_are_ordered_and_bounded(k, n, n_boot, seed, level):
    r = np.random.default_rng(seed)
    counts = r.integers(0, k + 1, size=(2, 3, n)).astype(np.uint16)
    weights = stats.bootstrap_weights(n, n_boot, seed=seed)
    means = stats.bootstrap_cell_totals(counts, weights) / (n * k)
    lo, hi = stats.percentile_ci(means, level, axis=0)
    assert np.all(lo <= hi)
    assert np.all((lo >= 0) & (hi <= 1))
    # a resample's mean lies within the range of the per-prompt values it averages
    assert np.all(lo >= counts.min(-1) / k - 1e-12) and np.all(hi <= counts.max(-1) / k + 1e-12)
    reps = stats.depth_alignment_stats(means, 1, 2)
    for key in ("spearman_ab", "spearman_ba", "near_mean", "far_mean"):
        slo, shi = stats.percentile_ci(reps[key], level)
        assert (np.isnan(slo) and np.isnan(shi)) or slo <= shi


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12), st.floats(0, 1), st.booleans(),
       st.one_of(st.none(), st.tuples(st.floats(-1, 1), st.floats(-1, 1))),
       st.one_of(st.none(), st.floats(1e-4, 1)))
def test_constant_matrices_are_never_track(La, Lb, value, include_embeddings, ci_lows, p):
    m = np.full((La + 1, Lb + 1), value)
    v = verdict.depth_verdict(m, La, Lb, ci_lows=ci_lows, spearman_p=p, include_embeddings=include_embeddings)
    assert v["verdict"] == "undefined" and v["reasons"]


@SETTINGS
@given(st.one_of(int_matrices(), float_matrices()), st.booleans(),
       st.one_of(st.none(), st.tuples(st.floats(-1, 1), st.floats(-1, 1))),
       st.one_of(st.none(), st.floats(1e-4, 1)))
def test_track_needs_every_criterion(case, include_embeddings, ci_lows, p):
    m, La, Lb = case
    v = verdict.depth_verdict(m, La, Lb, ci_lows=ci_lows, spearman_p=p, include_embeddings=include_embeddings)
    assert v["verdict"] in ("track", "no", "undefined") and isinstance(v["reasons"], list)
    if v["verdict"] == "track":
        assert v["spearman_ab"] > 0 and v["spearman_ba"] > 0
        assert v["spearman_ab_highest"] > 0 and v["spearman_ba_highest"] > 0
        assert ci_lows is None or min(ci_lows) > 0
        assert p is None or p <= 0.05
        assert v["contrast"] > 0


@settings(deadline=None, derandomize=True, max_examples=25)
@given(st.integers(2, 4), st.integers(2, 4), st.integers(6, 30), st.integers(1, 3), st.integers(1, 20),
       st.integers(0, 2**32 - 1), st.booleans())
def test_permutation_pvalues_in_unit_interval(la, lb, n, k, n_perm, seed, include_embeddings):
    r = np.random.default_rng(seed)
    k = min(k, n - 1)
    a = r.integers(0, n, size=(la, n, k)).astype(np.int32)  # arbitrary lists, duplicates included
    b = r.integers(0, n, size=(lb, n, k)).astype(np.int32)
    res = calibration.permutation_null(a, b, k, n_perm=n_perm, seed=seed, overlap=layerknn.overlap,
                                       include_embeddings=include_embeddings)
    floor = 1 / (1 + n_perm)
    assert np.all((res.p_values >= floor) & (res.p_values <= 1))
    assert floor <= res.p_family <= 1
    fam = res.p_adjusted[~np.isnan(res.p_adjusted)]
    assert fam.size == (la - (not include_embeddings)) * (lb - (not include_embeddings))
    assert np.all((fam >= floor) & (fam <= 1))
    s = 0 if include_embeddings else 1
    assert np.all(res.p_adjusted[s:, s:] >= res.p_values[s:, s:])
    assert res.p_family == res.p_adjusted[s:, s:].min()
    assert all(floor <= p <= 1 for p in res.spearman_p.values())
    assert np.all(res.null_std >= 0) and np.all((res.null_mean >= 0) & (res.null_mean <= 1))
