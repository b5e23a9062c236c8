"""layerknn.zoo: one path with compare, exact transposes, save/load of everything, counts one pair at a time."""

from __future__ import annotations

import numpy as np
import pytest

import layerknn
from layerknn import Zoo


def drifting(base, num_layers, seed, noise=0.4):
    r = np.random.default_rng(seed)
    out = []
    for layer in range(num_layers + 1):
        t = layer / num_layers
        out.append(np.cos(t) * base + np.sin(t) * np.roll(base, 1, axis=1) + noise * r.standard_normal(base.shape))
    return np.stack(out).astype(np.float32)


@pytest.fixture
def models(rng):
    base = rng.standard_normal((90, 12))
    return [drifting(base, layers, seed) for layers, seed in ((4, 1), (3, 2), (5, 3))]


def same_stats(x, y):
    assert x.keys() == y.keys()
    for key in x:
        if isinstance(x[key], np.ndarray):
            np.testing.assert_array_equal(x[key], y[key])
        elif key == "stats":
            assert x[key] == y[key]
        else:
            assert x[key] == y[key], key


def test_compare_is_the_two_model_zoo(models):
    a, b, _ = models
    z = layerknn.zoo([a, b], k=5, bootstrap=40, permutations=15, seed=3)
    c = layerknn.compare(a, b, k=5, bootstrap=40, permutations=15, seed=3)
    zc = z.comparison(0, 1)
    np.testing.assert_array_equal(zc.matrix, c.matrix)
    np.testing.assert_array_equal(zc.p_values, c.p_values)
    same_stats(zc.ci, c.ci)
    assert zc.summary() == c.summary()


def test_reversed_pair_is_the_exact_transpose_statistics_included(models):
    z = layerknn.zoo(models, k=5, bootstrap=40, permutations=15, names=["x", "y", "w"])
    ab, ba = z.comparison("x", "w"), z.comparison("w", "x")
    np.testing.assert_array_equal(ba.matrix, ab.matrix.T)
    np.testing.assert_array_equal(ba.p_values, ab.p_values.T)
    np.testing.assert_array_equal(ba.calibration.calibrated, ab.calibration.calibrated.T)
    assert ba.calibration.spearman_p["spearman_ab"] == ab.calibration.spearman_p["spearman_ba"]
    assert ba.calibration.p_family == ab.calibration.p_family
    assert ba.verdict()["verdict"] == ab.verdict()["verdict"]
    np.testing.assert_array_equal(ba.per_prompt, np.swapaxes(ab.per_prompt, 0, 1))
    np.testing.assert_array_equal(ba.ci["matrix_low"], ab.ci["matrix_low"].T)
    assert ba.ci["stats"]["spearman_ab"] == ab.ci["stats"]["spearman_ba"]
    assert ba.ci["stats"]["mean_abs_depth_error_ba"] == ab.ci["stats"]["mean_abs_depth_error_ab"]
    np.testing.assert_array_equal(ba.ci["best_depth_ab_low"], ab.ci["best_depth_ba_low"])
    assert ba.names == ("w", "x") and ba.depth_alignment()["spearman_ab"] == ab.depth_alignment()["spearman_ba"]
    # and it equals a direct comparison in that orientation, statistics included
    direct = layerknn.compare(models[2], models[0], k=5, bootstrap=40, permutations=15, names=("w", "x"))
    np.testing.assert_array_equal(ba.matrix, direct.matrix)
    np.testing.assert_array_equal(ba.ci["matrix_low"], direct.ci["matrix_low"])
    assert ba.ci["stats"]["spearman_ab"] == direct.ci["stats"]["spearman_ab"]


def test_save_load_round_trips_everything(tmp_path, models):
    z = layerknn.zoo(models, k=4, bootstrap=30, permutations=10, names=["x", "y", "w"])
    back = Zoo.load(z.save(tmp_path / "zoo.npz"))
    assert back.names == z.names and back.num_layers == z.num_layers and (back.n, back.k) == (z.n, z.k)
    np.testing.assert_array_equal(back.matrix, z.matrix)
    assert back.meta["options"] == z.meta["options"]
    for key in z.pair_stats:
        same_stats(back.pair_stats[key]["ci"], z.pair_stats[key]["ci"])
        for field in ("p_values", "p_adjusted", "calibrated", "null_mean", "max_null"):
            np.testing.assert_array_equal(getattr(back.pair_stats[key]["calibration"], field),
                                          getattr(z.pair_stats[key]["calibration"], field))
        assert back.pair_stats[key]["calibration"].spearman_p == z.pair_stats[key]["calibration"].spearman_p
    for i, j in ((0, 1), (2, 1)):
        assert back.comparison(i, j).summary() == z.comparison(i, j).summary()
        np.testing.assert_array_equal(back.comparison(i, j).per_prompt, z.comparison(i, j).per_prompt)
    slim = Zoo.load(z.save(tmp_path / "slim.npz", include_neighbors=False))
    with pytest.raises(ValueError, match="per-prompt"):
        slim.comparison(0, 1).bootstrap(10)


def test_per_prompt_counts_are_computed_one_pair_at_a_time(models, monkeypatch):
    """Peak memory: the zoo never asks the engine for counts of more than one pair."""
    import sys

    overlap_module = sys.modules["layerknn.overlap"]  # the module (the package re-exports a function)

    calls = []
    real = overlap_module.overlap

    def spy(a, b, k=None, *, per_prompt=False, **kw):
        calls.append((np.shape(a)[0], np.shape(b)[0], per_prompt))
        return real(a, b, k, per_prompt=per_prompt, **kw)

    monkeypatch.setattr(overlap_module, "overlap", spy)
    layerknn.zoo(models, k=4, bootstrap=20, permutations=0)
    layers = sorted(m.shape[0] for m in models)
    counted = [(la, lb) for la, lb, per_prompt in calls if per_prompt]
    assert len(counted) == 3  # one per pair
    assert all(la in layers and lb in layers for la, lb in counted)
    assert not any(la > max(layers) or lb > max(layers) for la, lb, _ in calls if _)


def test_bad_zoo_inputs(models):
    with pytest.raises(ValueError, match="at least two models"):
        layerknn.zoo(models[:1])
    with pytest.raises(ValueError, match="one entry per model"):
        layerknn.zoo(models, names=["a"])
    with pytest.raises(TypeError, match="bootstrap must be an integer"):
        layerknn.zoo(models, bootstrap=1.5)
    with pytest.raises(ValueError, match="permutations must be an integer >= 0"):
        layerknn.zoo(models, permutations=-1)
    z = layerknn.zoo(models, k=3, bootstrap=0, permutations=0)
    with pytest.raises(ValueError, match="unknown model"):
        z.comparison("nope", 0)
    with pytest.raises(ValueError, match="different models"):
        z.comparison(1, 1)
