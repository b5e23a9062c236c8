"""layerknn.stats against plain references: ranks, Spearman, best matches, bootstrap, permutations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

import layerknn
from layerknn import calibration, stats, verdict


@pytest.mark.filterwarnings("ignore:An input array is constant")  # scipy's reference warns where both give NaN
def test_spearman_matches_scipy_spearmanr(rng):
    for size in (2, 5, 31):
        x = rng.integers(0, 4, size=size).astype(float)  # many ties
        y = rng.standard_normal(size)
        rho = stats.spearman(x, y)
        ref = scipy.stats.spearmanr(x, y).statistic
        if np.isnan(ref):
            assert np.isnan(rho)
        else:
            np.testing.assert_allclose(rho, ref, rtol=1e-12)
    batch = rng.standard_normal((7, 12))
    xs = np.arange(12.0)
    np.testing.assert_allclose(stats.spearman(xs, batch),
                               [scipy.stats.spearmanr(xs, row).statistic for row in batch], rtol=1e-12)
    ties = rng.integers(0, 3, size=(5, 4, 9)).astype(float)  # batched on both sides, tied ranks
    ref = np.array([[scipy.stats.spearmanr(a, b).statistic for a, b in zip(xa, xb)]
                    for xa, xb in zip(ties, ties[::-1])])
    np.testing.assert_allclose(stats.spearman(ties, ties[::-1]), ref, rtol=1e-12, equal_nan=True)


def test_spearman_of_constant_is_nan():
    assert np.isnan(stats.spearman(np.arange(4.0), np.ones(4)))


def test_best_match_tie_rule_is_lowest_index():
    m = np.zeros((5, 5))
    m[2, [0, 3, 4]] = 1.0           # tie among 0, 3, 4: the paper's argmax keeps 0
    m[1, [2, 4]] = 1.0              # tie: 2, not the later 4
    m[4] = [0, 0, 0, 0.5, 0.2]      # plain argmax
    best = stats.best_match(m)
    np.testing.assert_array_equal(best, [0, 2, 0, 0, 3])  # all-zero rows 0 and 3: column 0
    np.testing.assert_array_equal(best, m.argmax(axis=1))
    np.testing.assert_array_equal(stats.best_match(m, ties="highest"), [4, 4, 4, 4, 3])
    np.testing.assert_array_equal(stats.best_match_ties(m), [True, True, True, True, False])
    with pytest.raises(ValueError, match="ties must be 'lowest' or 'highest', got 'diagonal'"):
        stats.best_match(m, ties="diagonal")


def test_best_match_ties_batched(rng):
    batch = rng.integers(0, 3, size=(6, 4, 5)).astype(float)  # small integers: many tied maxima
    ties = stats.best_match_ties(batch)
    ref = np.array([[np.sum(row == row.max()) > 1 for row in mat] for mat in batch])
    np.testing.assert_array_equal(ties, ref)
    np.testing.assert_array_equal(stats.best_match(batch), batch.argmax(-1))
    high = np.array([[max(np.flatnonzero(row == row.max())) for row in mat] for mat in batch])
    np.testing.assert_array_equal(stats.best_match(batch, ties="highest"), high)


def test_depth_alignment_identity_and_reversal():
    s = stats.depth_alignment_stats(np.eye(7), 6, 6)
    assert s["spearman_ab"] == pytest.approx(1.0) and s["spearman_ba"] == pytest.approx(1.0)
    assert s["mean_abs_depth_error"] == 0 and s["near_mean"] == pytest.approx(1.0) and s["far_mean"] == 0
    assert s["tied_ab"] == 0 and s["tied_ba"] == 0
    rev = stats.depth_alignment_stats(np.eye(7)[::-1], 6, 6, include_embeddings=True)
    assert rev["spearman_ab"] == pytest.approx(-1.0)
    np.testing.assert_array_equal(rev["best_ab"], np.arange(6, -1, -1))
    # embeddings excluded (default): block 6's only match is column 0, not a candidate, so its
    # all-zero row goes to the lowest block, 1 (one tied row in each direction)
    blocks = stats.depth_alignment_stats(np.eye(7)[::-1], 6, 6)
    np.testing.assert_array_equal(blocks["best_ab"], [5, 4, 3, 2, 1, 1])
    assert blocks["tied_ab"] == 1 and blocks["tied_ba"] == 1


def test_depth_alignment_unequal_depths():
    La, Lb = 12, 6
    m = np.zeros((La + 1, Lb + 1))
    for i in range(La + 1):
        m[i, round(i * Lb / La)] = 1.0
    s = stats.depth_alignment_stats(m, La, Lb)
    depth_a = np.arange(1, La + 1) / La
    best = np.maximum(np.round(depth_a * Lb), 1)  # column 0 (embeddings) is no candidate
    expected = scipy.stats.spearmanr(depth_a, best / Lb).statistic
    assert s["spearman_ab"] == pytest.approx(expected) and s["spearman_ba"] == pytest.approx(1.0)
    # B->A: some columns hold two equal maxima (rows 2j - 1 and 2j); the lower row wins
    first_row = m[1:, 1:].argmax(axis=0) + 1
    ref_ba = np.abs(first_row / La - np.arange(1, Lb + 1) / Lb).mean()
    assert s["mean_abs_depth_error_ba"] == pytest.approx(ref_ba) and s["tied_ba"] > 0
    assert s["mean_abs_depth_error_ab"] <= 1 / (2 * Lb) + 1e-12


def test_depth_alignment_batched_equals_loop(rng):
    batch = rng.random((5, 8, 6))
    out = stats.depth_alignment_stats(batch, 7, 5)
    for b in range(5):
        one = stats.depth_alignment_stats(batch[b], 7, 5)
        for key in stats.DEPTH_STATS:
            np.testing.assert_allclose(out[key][b], one[key], equal_nan=True)
        np.testing.assert_array_equal(out["best_ab"][b], one["best_ab"])


def test_bootstrap_totals_equal_explicit_resampling(rng):
    counts = rng.integers(0, 11, size=(3, 4, 50)).astype(np.uint16)
    weights = stats.bootstrap_weights(50, 20, seed=7)
    draws = np.random.default_rng(7).integers(0, 50, size=(20, 50))
    ref = np.stack([counts[..., d].sum(-1) for d in draws]).astype(float)
    np.testing.assert_array_equal(stats.bootstrap_cell_totals(counts, weights), ref)
    # tiny chunks give the same answer
    np.testing.assert_array_equal(stats.bootstrap_cell_totals(counts, weights, max_bytes=1), ref)


def test_relabel_recovers_permuted_prompts(rng):
    n = 60
    x = rng.standard_normal((n, 8)).astype(np.float32)
    perm = rng.permutation(n)
    inverse = np.argsort(perm)
    y = x[inverse]  # B's prompt perm[i] is A's prompt i
    na = layerknn.knn(x[None], k=5).indices
    nb = layerknn.knn(y[None], k=5).indices
    relabelled = stats.relabel_neighbors(nb, perm)
    assert all(set(relabelled[0, i]) == set(na[0, i]) for i in range(n))


def test_permutation_pvalues_identical_and_independent(rng):
    n, k = 200, 5
    a = layerknn.knn(rng.standard_normal((2, n, 6)).astype(np.float32), k=k).indices
    b = layerknn.knn(rng.standard_normal((2, n, 6)).astype(np.float32), k=k).indices
    obs_same = layerknn.overlap(a, a, k)
    p_same = calibration.permutation_pvalues(a, a, k, obs_same, n_perm=99, seed=1)
    np.testing.assert_allclose(np.diag(p_same), 1 / 100)
    obs_ind = layerknn.overlap(a, b, k)
    p_ind = calibration.permutation_pvalues(a, b, k, obs_ind, n_perm=99, seed=1)
    assert p_ind.min() > 0.01  # nothing looks significant at the resolution of 99 shuffles


def test_boundary_tie_rate():
    scores = np.array([[[3.0, 2.0, 2.0, 1.0], [3.0, 2.0, 1.0, 1.0]]])
    np.testing.assert_allclose(stats.boundary_tie_rate(scores, 2), [0.5])
    np.testing.assert_allclose(stats.boundary_tie_rate(scores, 3), [0.5])
    np.testing.assert_allclose(stats.boundary_tie_rate(scores, 1), [0.0])
    with pytest.raises(ValueError, match="k \\+ 1"):
        stats.boundary_tie_rate(scores, 4)


def test_percentile_ci_bad_level():
    with pytest.raises(ValueError, match="level"):
        stats.percentile_ci(np.arange(5.0), 1.5)


# ----------------------------------------------------------------------------- the paper's statistic


@pytest.mark.parametrize("include_embeddings", [False, True])
def test_depth_alignment_equals_argmax_scipy_reference(rng, include_embeddings):
    """The paper: per-row argmax (lowest index on ties), then Spearman of depths (scipy)."""
    start = 0 if include_embeddings else 1
    for trial in range(40):
        La, Lb = (int(x) for x in rng.integers(1, 9, size=2))
        if not include_embeddings:
            La, Lb = La + 1, Lb + 1  # at least two blocks so Spearman can be defined
        m = rng.integers(0, 3 + trial % 4, size=(La + 1, Lb + 1)).astype(float) / 7  # many tied maxima
        m[rng.integers(0, La + 1)] = 0.25  # a whole row tied
        s = stats.depth_alignment_stats(m, La, Lb, include_embeddings=include_embeddings)
        sub = m[start:, start:]
        depth_a, depth_b = np.arange(start, La + 1) / La, np.arange(start, Lb + 1) / Lb
        best_ab, best_ba = np.argmax(sub, axis=1), np.argmax(sub, axis=0)
        np.testing.assert_array_equal(s["best_ab"], best_ab + start)
        np.testing.assert_array_equal(s["best_ba"], best_ba + start)
        for key, x, y in (("spearman_ab", depth_a, depth_b[best_ab]), ("spearman_ba", depth_b, depth_a[best_ba])):
            with warnings.catch_warnings():  # scipy warns on constant input (and returns NaN)
                warnings.simplefilter("ignore")
                ref = scipy.stats.spearmanr(x, y).statistic
            np.testing.assert_allclose(s[key], ref, rtol=1e-12, atol=1e-15, equal_nan=True)
        assert s["tied_ab"] == sum(np.sum(row == row.max()) > 1 for row in sub)
        assert s["tied_ba"] == sum(np.sum(col == col.max()) > 1 for col in sub.T)


# ----------------------------------------------------------------------------- depth_verdict


def band(La, Lb, width=0.1, low=0.05, high=0.4):
    da, db = np.arange(La + 1) / La, np.arange(Lb + 1) / Lb
    return np.where(np.abs(da[:, None] - db[None, :]) <= width, high, low) - 0.1 * np.abs(da[:, None] - db[None, :])


@pytest.mark.parametrize("matrix", [np.full((13, 19), 0.2), np.ones((13, 19)), np.zeros((13, 19))])
def test_verdict_undefined_without_contrast(matrix):
    # Comparison.from_matrix(np.full((13, 19), 0.2), n=100, k=5).summary() used to say TRACK
    v = verdict.depth_verdict(matrix, 12, 18, ci_lows=(0.5, 0.5), spearman_p=0.001)
    assert v["verdict"] == "undefined" and "no contrast" in v["reasons"][0]
    assert v["contrast"] == 0 and v["tied_ab"] == 12 and v["tied_ba"] == 18


def test_verdict_track_for_a_clear_band():
    m = band(12, 18)
    v = verdict.depth_verdict(m, 12, 18)
    assert v["verdict"] == "track" and v["spearman_ab"] > 0.9 and v["spearman_ba"] > 0.9
    assert any("no permutation p-value" in r for r in v["reasons"])
    assert any("no bootstrap interval" in r for r in v["reasons"])
    full = verdict.depth_verdict(m, 12, 18, ci_lows=(0.8, 0.7), spearman_p=(0.001, 0.01))
    assert full["verdict"] == "track" and full["reasons"] == [] and full["spearman_p"] == 0.01


def test_verdict_no_when_a_criterion_fails():
    m = band(12, 18)
    assert verdict.depth_verdict(m[::-1], 12, 18)["verdict"] == "no"  # anti-diagonal: Spearman < 0
    v = verdict.depth_verdict(m, 12, 18, ci_lows=(0.5, -0.1))
    assert v["verdict"] == "no" and "B->A = -0.100 is not above 0" in v["reasons"][-2]
    v = verdict.depth_verdict(m, 12, 18, spearman_p=0.2, alpha=0.05)
    assert v["verdict"] == "no" and "0.2 > alpha = 0.05" in v["reasons"][-1]


def test_verdict_undefined_when_constant_or_tie_driven():
    La, Lb = 6, 6
    m = np.full((La + 1, Lb + 1), 0.1)
    m[:, 3] = 0.5  # every block's best match is B block 3: constant sequence
    v = verdict.depth_verdict(m, La, Lb)
    assert v["verdict"] == "undefined" and "same layer" in v["reasons"][0]
    # upper blocks flat (ties), lower blocks a clean diagonal: the sign of Spearman A->B
    # depends on sending the flat rows to the lowest or the highest column
    m = np.full((La + 1, Lb + 1), 0.1)
    m[np.arange(4, 7), np.arange(4, 7)] = 0.5
    m[4:, :4] = 0.0
    v = verdict.depth_verdict(m, La, Lb)
    assert v["verdict"] == "undefined" and "tie-breaking" in " ".join(v["reasons"])
    assert v["tied_ab"] == 3
    v = verdict.depth_verdict(band(6, 6), 6, 6, ci_lows=(np.nan, 0.5))
    assert v["verdict"] == "undefined" and "NaN" in v["reasons"][-1]


def test_verdict_bad_inputs():
    with pytest.raises(ValueError, match=r"matrix must have shape \(7, 7\), got \(7, 6\)"):
        verdict.depth_verdict(np.ones((7, 6)), 6, 6)
    with pytest.raises(ValueError, match="alpha must be in"):
        verdict.depth_verdict(np.eye(7), 6, 6, alpha=1.5)
    with pytest.raises(ValueError, match="ci_lows must be a number or a pair"):
        verdict.depth_verdict(np.eye(7), 6, 6, ci_lows=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="spearman_p must be in"):
        verdict.depth_verdict(np.eye(7), 6, 6, spearman_p=0.0)
    with pytest.raises(ValueError, match="finite"):
        verdict.depth_verdict(np.full((7, 7), np.nan), 6, 6)
