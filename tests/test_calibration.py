"""layerknn.calibration.permutation_null against a slow one-shuffle-at-a-time reference, and its
behaviour under the null (independent models) and the alternative (identical / depth-tracking)."""

from __future__ import annotations


import numpy as np
import pytest
import scipy.stats

import layerknn
from layerknn import calibration, stats, verdict


def gaussian_knn(rng, layers, n, k, d=8):
    return layerknn.knn(rng.standard_normal((layers, n, d)).astype(np.float32), k=k).indices


def drifting_knn(rng, base, layers, k, noise=0.3):
    """Layers that rotate the same base points as depth grows: best matches track depth."""
    half = base.shape[1] // 2
    out = []
    for layer in range(layers + 1):
        t = 1.5 * layer / layers
        x = np.concatenate([np.cos(t) * base[:, :half], np.sin(t) * base[:, half:]], axis=1)
        out.append(x + noise * rng.standard_normal(base.shape))
    return layerknn.knn(np.stack(out).astype(np.float32), k=k).indices


def slow_reference(a, b, k, n_perm, seed, include_embeddings):
    """Everything from one overlap call per shuffle, in plain NumPy."""
    observed = layerknn.overlap(a, b, k)
    r = np.random.default_rng(seed)
    nulls = np.stack([layerknn.overlap(a, stats.relabel_neighbors(b, r.permutation(a.shape[1])), k)
                      for _ in range(n_perm)])
    s = 0 if include_embeddings else 1
    family_max = nulls[:, s:, s:].max(axis=(1, 2))
    la, lb = a.shape[0] - 1, b.shape[0] - 1

    def spear(m):
        d = stats.depth_alignment_stats(m, la, lb, include_embeddings=include_embeddings)
        ab, ba = np.nan_to_num(d["spearman_ab"]), np.nan_to_num(d["spearman_ba"])
        return {"spearman_ab": ab, "spearman_ba": ba, "spearman_mean": (ab + ba) / 2, "spearman_min": min(ab, ba)}

    obs_s = spear(observed)
    null_s = [spear(m) for m in nulls]
    p_adj = np.full(observed.shape, np.nan)
    p_adj[s:, s:] = [[(1 + np.sum(family_max >= v - 1e-12)) / (1 + n_perm) for v in row] for row in observed[s:, s:]]
    return {
        "null_mean": nulls.mean(0), "null_std": nulls.std(0),
        "p_values": (1 + (nulls >= observed - 1e-12).sum(0)) / (1 + n_perm),
        "p_family": (1 + np.sum(family_max >= observed[s:, s:].max() - 1e-12)) / (1 + n_perm),
        "p_adjusted": p_adj, "max_null": family_max,
        "spearman_p": {key: (1 + sum(x[key] >= obs_s[key] - 1e-12 for x in null_s)) / (1 + n_perm)
                       for key in calibration.SPEARMAN_STATS},
        "spearman_null": {key: np.array([x[key] for x in null_s]) for key in calibration.SPEARMAN_STATS},
    }


@pytest.mark.parametrize("include_embeddings", [False, True])
@pytest.mark.parametrize("blocks", [(5, 3), (3, 5), (4, 4)])  # B, A or B copied and relabelled
def test_equals_slow_loop(rng, include_embeddings, blocks):
    n, k, n_perm = 90, 4, 37
    base = rng.standard_normal((n, 8))
    a = drifting_knn(rng, base, blocks[0], k)
    b = drifting_knn(rng, base, blocks[1], k)
    # one or two shuffles per overlap call (4 or 5 layers x n x k int32 each), uneven last chunk
    res = calibration.permutation_null(a, b, k, n_perm=n_perm, seed=5, overlap=layerknn.overlap,
                                       include_embeddings=include_embeddings, max_bytes=2 * 4 * n * k * 4)
    ref = slow_reference(a, b, k, n_perm, 5, include_embeddings)
    np.testing.assert_array_equal(res.p_values, ref["p_values"])
    np.testing.assert_array_equal(res.p_adjusted, ref["p_adjusted"])
    np.testing.assert_array_equal(res.max_null, ref["max_null"])
    assert res.p_family == ref["p_family"] and res.spearman_p == ref["spearman_p"]
    for key in calibration.SPEARMAN_STATS:
        np.testing.assert_array_equal(res.spearman_null[key], ref["spearman_null"][key])
    np.testing.assert_allclose(res.null_mean, ref["null_mean"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.null_std, ref["null_std"], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(res.calibrated, (res.observed - ref["null_mean"]) / (1 - ref["null_mean"]),
                               rtol=1e-12)
    # the old per-cell function shares the machinery and the shuffles
    np.testing.assert_array_equal(calibration.permutation_pvalues(a, b, k, res.observed, n_perm=n_perm, seed=5),
                                  res.p_values)
    # chunking does not change anything
    big = calibration.permutation_null(a, b, k, n_perm=n_perm, seed=5, include_embeddings=include_embeddings)
    np.testing.assert_array_equal(big.p_values, res.p_values)
    np.testing.assert_allclose(big.null_mean, res.null_mean, rtol=1e-12)


def test_deterministic_for_a_seed(rng):
    a, b = gaussian_knn(rng, 3, 120, 5), gaussian_knn(rng, 4, 120, 5)
    one = calibration.permutation_null(a, b, 5, n_perm=50, seed=3)
    two = calibration.permutation_null(a, b, 5, n_perm=50, seed=3)
    other = calibration.permutation_null(a, b, 5, n_perm=50, seed=4)
    np.testing.assert_array_equal(one.p_values, two.p_values)
    np.testing.assert_array_equal(one.null_mean, two.null_mean)
    assert one.spearman_p == two.spearman_p and one.p_family == two.p_family
    assert not np.array_equal(one.max_null, other.max_null)
    assert one.settings == {"n_perm": 50, "seed": 3, "k": 5, "include_embeddings": False, "min_p": 1 / 51}


def test_identical_inputs_are_maximally_significant(rng):
    a = gaussian_knn(rng, 8, 150, 5)  # 7 blocks: (with 3, a random order is monotone ~1/6 of the time)
    res = calibration.permutation_null(a, a, 5, n_perm=99, seed=0)
    assert res.p_family == pytest.approx(1 / 100)
    np.testing.assert_allclose(np.diag(res.p_values), 1 / 100)
    np.testing.assert_allclose(np.diag(res.p_adjusted)[1:], 1 / 100)
    assert np.isnan(res.p_adjusted[0]).all() and np.isnan(res.p_adjusted[:, 0]).all()
    np.testing.assert_array_equal(np.diag(res.calibrated), 1.0)
    assert res.spearman_p["spearman_min"] == pytest.approx(1 / 100)
    # the null sits at chance k / (n - 1)
    chance = 5 / 149
    assert abs(res.null_mean.mean() - chance) < 0.1 * chance


def test_independent_models_give_uniform_pvalues():
    """Under the null the test is exact: cell p-values ~ U(0, 1], p_family rarely small."""
    n, k, n_perm = 400, 8, 199
    p_cells, p_family, p_spear = [], [], []
    for seed in range(10):
        r = np.random.default_rng(1000 + seed)
        a, b = gaussian_knn(r, 5, n, k), gaussian_knn(r, 4, n, k)
        res = calibration.permutation_null(a, b, k, n_perm=n_perm, seed=seed)
        assert np.all((res.p_values > 0) & (res.p_values <= 1))
        assert np.all((res.p_adjusted[1:, 1:] >= res.p_values[1:, 1:]) & (res.p_adjusted[1:, 1:] <= 1))
        p_cells.append(res.p_values.ravel())
        p_family.append(res.p_family)
        p_spear.append(res.spearman_p["spearman_min"])
        assert np.all(np.abs(res.calibrated) < 0.2)
    p_cells = np.concatenate(p_cells)
    assert scipy.stats.kstest(p_cells, "uniform").pvalue > 0.001
    assert np.mean(p_cells <= 0.05) < 0.1
    assert sum(p > 0.05 for p in p_family) >= 8
    assert sum(p > 0.05 for p in p_spear) >= 8


def test_depth_tracking_pair_is_significant(rng):
    n, k = 200, 6
    base = rng.standard_normal((n, 16))
    a, b = drifting_knn(rng, base, 8, k), drifting_knn(rng, base, 5, k)
    res = calibration.permutation_null(a, b, k, n_perm=99, seed=1)
    assert res.p_family == pytest.approx(1 / 100)
    assert res.spearman_p["spearman_ab"] == pytest.approx(1 / 100)
    assert res.spearman_p["spearman_min"] == pytest.approx(1 / 100)
    assert res.spearman["spearman_min"] > 0.8
    v = verdict.depth_verdict(res.observed, 8, 5, spearman_p=res.spearman_p["spearman_min"])
    assert v["verdict"] == "track"


def test_progress_and_observed_argument(rng):
    a, b = gaussian_knn(rng, 3, 80, 4), gaussian_knn(rng, 3, 80, 4)
    seen = []
    res = calibration.permutation_null(a, b, 4, n_perm=30, progress=seen.append, max_bytes=3 * 4 * 80 * 4 * 7)
    assert sum(seen) == 30 and len(seen) == 5  # chunks of 7 shuffles
    given = calibration.permutation_null(a, b, 4, n_perm=30, observed=layerknn.overlap(a, b, 4))
    np.testing.assert_array_equal(given.p_values, res.p_values)


def test_bad_inputs(rng):
    a, b = gaussian_knn(rng, 3, 40, 4), gaussian_knn(rng, 3, 50, 4)
    with pytest.raises(ValueError, match="same prompts: n=40 vs n=50"):
        calibration.permutation_null(a, b, 4)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\].*got 5"):
        calibration.permutation_null(a, a, 5)
    with pytest.raises(TypeError, match="n_perm must be an integer, got float"):
        calibration.permutation_null(a, a, 4, n_perm=10.0)
    with pytest.raises(ValueError, match="n_perm must be >= 1, got 0"):
        calibration.permutation_null(a, a, 4, n_perm=0)
    with pytest.raises(ValueError, match=r"observed must have shape \(3, 3\), got \(2, 2\)"):
        calibration.permutation_null(a, a, 4, observed=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"nbrs_a must have shape \(layers, n, k\)"):
        calibration.permutation_null(a[0], a, 4)
    with pytest.raises(TypeError, match="nbrs_b must hold integer neighbour indices, got dtype float64"):
        calibration.permutation_null(a, a.astype(float), 4)
    bad = a.copy()
    bad[1, 3, 2] = 40
    with pytest.raises(ValueError, match=r"nbrs_b must hold prompt indices in \[0, n-1\] = \[0, 39\], got values in"):
        calibration.permutation_null(a, bad, 4)
    with pytest.raises(ValueError, match=r"nbrs_a must hold prompt indices.*got values in \[-1, "):
        calibration.permutation_null(a - 1, a, 4)
    with pytest.raises(ValueError, match=">= 2 layers each"):
        calibration.permutation_null(a[:1], a, 4)
    with pytest.raises(TypeError, match="overlap must be callable"):
        calibration.permutation_null(a, a, 4, overlap="fast")
    with pytest.raises(ValueError, match="overlap must return shape"):
        calibration.permutation_null(a, a, 4, n_perm=3, overlap=lambda x, y, k: np.zeros((3, 3)))


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")  # prompts cut to 24 tokens on purpose
def test_main_job_models_are_family_wise_significant():
    """The main job's two real models, on a small slice of its data: the best block cell beats every shuffle."""
    from layerknn.models import _ALIASES, _installed

    for alias in ("smollm2-135m", "gemma3-270m"):
        if not _installed(_ALIASES[alias]):
            pytest.skip(f"{_ALIASES[alias].package} is not installed")
    pytest.importorskip("gguf")
    c = layerknn.compare("smollm2-135m", "gemma3-270m", "builtin:stdlib-docs?n=96", k=5, max_length=16,
                         bootstrap=0, permutations=0, cache=False)
    null = c.calibrate(n_perm=199, seed=0)
    assert null.p_family <= 0.01
    blocks = (slice(1, None), slice(1, None))
    assert np.all(null.p_adjusted[blocks] >= null.p_family)
    assert float(np.max(null.calibrated[blocks])) > 0
