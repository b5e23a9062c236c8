"""layerknn.alignment: monotone_path against brute force over every non-decreasing path; align() and
Comparison.alignment (best matches, monotone path, OT coupling) against plain NumPy references."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest

from layerknn import Comparison
from layerknn.alignment import align, monotone_path
from layerknn.alignment_ot import ot_coupling
from layerknn.stats import best_match


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


# ---------------------------------------------------------------------------------------------
# align(): best matches, monotone path and the OT coupling behind one call, with bootstrap bands

def numpy_sinkhorn(m, reg):
    """Plain NumPy Sinkhorn on the documented cost (1 - similarity rescaled by the range), to convergence."""
    R, C = m.shape
    span = m.max() - m.min()
    cost = (m.max() - m) / span if span > 0 else np.zeros_like(m)
    K = np.exp(-cost / reg)
    u, v = np.ones(R), np.ones(C)
    for _ in range(200_000):
        v = (1 / C) / (K.T @ u)
        u = (1 / R) / (K @ v)
        if np.abs((u[:, None] * K * v).sum(axis=0) - 1 / C).max() < 1e-14:
            break
    return u[:, None] * K * v[None, :]


def diagonal_counts(rng, la, lb, n, k, sharp=0.6):
    """Per-prompt overlap counts (La+1, Lb+1, n) whose mean peaks on the depth diagonal."""
    da, db = np.arange(la + 1) / la, np.arange(lb + 1) / lb
    p = 0.05 + sharp * np.exp(-((da[:, None] - db[None, :]) ** 2) / 0.02)
    return rng.binomial(k, p[..., None], size=(la + 1, lb + 1, n)).astype(np.uint16)


def counted(counts, k):
    return Comparison(counts.mean(axis=-1) / k, n=counts.shape[-1], k=k, per_prompt=counts, names=("a", "b"))


def test_argmax_and_monotone_equal_their_references(rng):
    for trial in range(60):
        la, lb = (int(x) for x in rng.integers(1, 6, size=2))
        m = rng.integers(0, 3, size=(la + 1, lb + 1)).astype(float) if trial % 2 else rng.random((la + 1, lb + 1))
        for include in (False, True):
            s = 0 if include else 1
            sub = m[s:, s:]
            a = align(m, la, lb, "argmax", include_embeddings=include)
            np.testing.assert_array_equal(a.path, best_match(sub) + s)
            assert a.score == pytest.approx(sub.max(axis=1).mean(), rel=1e-12)
            np.testing.assert_array_equal(a.depth, a.path / lb)
            mono = align(m, la, lb, "monotone", include_embeddings=include)
            path, total = brute_force(sub)
            np.testing.assert_array_equal(mono.path, path + s)
            assert mono.score == pytest.approx(total / sub.shape[0], rel=1e-12)
            np.testing.assert_array_equal(mono.layers_a, np.arange(s, la + 1))
            assert mono.coupling is None and a.reg is None


def test_ot_coupling_matches_numpy_sinkhorn_and_its_marginals(rng):
    for R, C, reg in ((1, 1, 0.1), (1, 4, 0.1), (4, 1, 0.3), (3, 5, 0.05), (6, 4, 0.1), (7, 7, 0.02), (5, 3, 1.0)):
        m = rng.random((R, C))
        if R * C > 2:
            m[0, -1] = m[-1, 0]  # a tie
        p = ot_coupling(m, reg)
        assert p.shape == (R, C) and np.all(p >= 0)
        np.testing.assert_allclose(p.sum(axis=1), 1 / R, rtol=0, atol=1e-15)
        np.testing.assert_allclose(p.sum(axis=0), 1 / C, rtol=0, atol=1e-8)
        np.testing.assert_allclose(p, numpy_sinkhorn(m, reg), rtol=0, atol=1e-8)
        a = align(np.pad(m, ((1, 0), (1, 0))), R, C, "ot", reg=reg)
        np.testing.assert_allclose(a.coupling, p, rtol=0, atol=1e-15)
        depth_b = np.arange(1, C + 1) / C
        np.testing.assert_allclose(a.depth, (p @ depth_b) * R, rtol=1e-12)
        assert a.score == pytest.approx((p * m).sum(), rel=1e-12) and a.path is None and a.reg == reg
    np.testing.assert_allclose(ot_coupling(np.full((3, 4), 0.2)), 1 / 12, rtol=1e-15)  # no contrast: uniform


def test_ot_agrees_with_pots_classic_sinkhorn(rng):
    ot = pytest.importorskip("ot")
    m = rng.random((6, 4))
    cost = (m.max() - m) / (m.max() - m.min())
    ref = ot.sinkhorn(np.full(6, 1 / 6), np.full(4, 1 / 4), cost, 0.1, numItermax=100_000, stopThr=1e-13)
    np.testing.assert_allclose(ot_coupling(m, 0.1), ref, rtol=0, atol=1e-8)


def test_ot_is_permutation_equivariant_and_batched(rng):
    m = rng.random((6, 5))
    rows, cols = rng.permutation(6), rng.permutation(5)
    np.testing.assert_allclose(ot_coupling(m[rows][:, cols], 0.05), ot_coupling(m, 0.05)[rows][:, cols], atol=1e-9)
    batch = rng.random((3, 2, 4, 5))
    out = ot_coupling(batch, 0.1)
    for idx in np.ndindex(3, 2):
        np.testing.assert_allclose(out[idx], ot_coupling(batch[idx], 0.1), atol=1e-9)


def test_small_reg_gives_a_near_hard_assignment_on_a_diagonal(rng):
    m = np.eye(7) * 0.5 + 0.01 * rng.random((7, 7))
    p = ot_coupling(m, 0.02)
    np.testing.assert_allclose(p * 7, np.eye(7), atol=1e-6)
    a = align(np.pad(m, ((1, 0), (1, 0))), 7, 7, "ot", reg=0.02)
    np.testing.assert_allclose(a.depth, np.arange(1, 8) / 7, atol=1e-6)
    # larger reg spreads the mass: the coupling moves towards uniform, the score towards the mean
    wide = ot_coupling(m, 5.0)
    assert np.abs(wide * 49 - 1).max() < 0.3 and (wide * m).sum() < (p * m).sum()


def test_bands_are_seeded_and_contain_the_estimate(rng):
    counts = diagonal_counts(rng, 6, 4, 300, 10)
    for method in ("argmax", "monotone", "ot"):
        one = align(counts.mean(-1) / 10, 6, 4, method, counts=counts, k=10, n_boot=60, seed=3)
        two = align(counts.mean(-1) / 10, 6, 4, method, counts=counts, k=10, n_boot=60, seed=3)
        other = align(counts.mean(-1) / 10, 6, 4, method, counts=counts, k=10, n_boot=60, seed=4)
        b = one.bands
        assert b["n_boot"] == 60 and b["seed"] == 3 and b["level"] == 0.95 and one.bands_reason is None
        np.testing.assert_array_equal(b["depth_low"], two.bands["depth_low"])
        np.testing.assert_array_equal(b["depth_high"], two.bands["depth_high"])
        assert (b["score_low"], b["score_high"]) == (two.bands["score_low"], two.bands["score_high"])
        assert (b["score_low"], b["score_high"]) != (other.bands["score_low"], other.bands["score_high"])
        assert np.all(b["depth_low"] <= one.depth + 1e-12) and np.all(one.depth <= b["depth_high"] + 1e-12)
        assert b["score_low"] <= one.score <= b["score_high"] and b["score_low"] < b["score_high"]
        # the matched depth follows the diagonal: depth of A's layer, give or take one B layer
        assert np.abs(one.depth - np.arange(1, 7) / 6).max() <= 0.25


def test_comparison_alignment_defaults_cache_and_reasons(rng):
    c = counted(diagonal_counts(rng, 5, 3, 120, 6), 6)
    a = c.alignment()
    assert a.method == "monotone" and a.bands is None and "n_boot=0" in a.bands_reason
    assert c.alignment() is a  # kept per setting
    c.bootstrap(n_boot=40, seed=7)
    banded = c.alignment("ot")
    assert banded.bands["n_boot"] == 40 and banded.bands["seed"] == 7
    ref = align(c.matrix, 5, 3, "ot", counts=c.per_prompt, k=6, n_boot=40, seed=7)
    np.testing.assert_array_equal(banded.bands["depth_low"], ref.bands["depth_low"])
    assert c.alignment("argmax", n_boot=0).bands is None
    bare = Comparison.from_matrix(c.matrix, n=120, k=6)
    assert bare.alignment("argmax", n_boot=100).bands_reason == "no per-prompt counts (a bare matrix)"
    report = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert set(report["alignment"]) == {"argmax", "monotone", "ot"}
    assert report["alignment"]["ot"]["bands"]["n_boot"] == 40 and len(report["alignment"]["ot"]["coupling"]) == 5
    line = next(s for s in c.summary().splitlines() if s.startswith("layer alignment"))
    assert "monotone path" in line and "OT coupling (reg 0.1)" in line and "95% CI" in line


def test_bad_method_and_reg():
    m = np.eye(3)
    with pytest.raises(ValueError, match="method must be one of 'argmax', 'monotone', 'ot', got 'dtw'"):
        align(m, 2, 2, "dtw")
    with pytest.raises(ValueError, match=r"reg must be a finite number >= 0.02 .*got 0.001"):
        align(m, 2, 2, "ot", reg=0.001)
    with pytest.raises(ValueError, match="reg must be .* got nan"):
        ot_coupling(m, float("nan"))
    with pytest.raises(TypeError, match="reg must be a real number, got str"):
        ot_coupling(m, "0.1")
    with pytest.raises(ValueError, match=r"matrix must have shape \(3, 3\), got \(3, 2\)"):
        align(m[:, :2], 2, 2)
    with pytest.raises(ValueError, match="matrix must hold finite values"):
        align(np.where(m > 0, np.nan, 0.0), 2, 2, "argmax")
    with pytest.raises(TypeError, match="n_boot must be an integer"):
        align(m, 2, 2, counts=np.ones((3, 3, 5)), n_boot=2.5)
    c = Comparison.from_matrix(m + 0.1, n=20, k=2)
    with pytest.raises(ValueError, match="method must be one of"):
        c.alignment("best")
    with pytest.raises(ValueError, match="reg must be"):
        c.alignment("ot", reg=-1)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 0, got -2"):
        c.alignment("monotone", n_boot=-2)


def test_missing_pot_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)
    monkeypatch.setitem(sys.modules, "ot.batch", None)
    with pytest.raises(ImportError, match=r"layerknn\[align\]"):
        ot_coupling(np.eye(3))
    c = Comparison.from_matrix(np.eye(3) + 0.1, n=20, k=2)
    with pytest.raises(ImportError, match=r"layerknn\[align\]"):
        c.alignment("ot")
    # the summary and report need no POT: they show OT only once it was asked for and computed
    assert "OT coupling" not in c.summary() and "monotone path" in c.summary()
    assert set(c.to_dict()["alignment"]) == {"argmax", "monotone"} and c.alignment("monotone").score > 0


def test_heatmap_draws_the_alignment(tmp_path, rng):
    import matplotlib.image

    c = counted(diagonal_counts(rng, 6, 4, 150, 8), 8)
    c.bootstrap(n_boot=30)

    def pink_pixels(path):
        image = matplotlib.image.imread(path)[..., :3]
        return int((np.abs(image - np.array([1.0, 0x4F / 255, 0xA3 / 255])).max(axis=-1) < 0.04).sum())

    plain = c.plot(tmp_path / "plain.png", alignment=None, dpi=60)
    assert plain.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pink_pixels(plain) == 0
    for method in ("monotone", "ot"):
        path = c.plot(tmp_path / f"{method}.png", alignment=method, dpi=60)
        assert pink_pixels(path) > 50, method
