"""layerknn.compare / Comparison / zoo on synthetic activations with known answers."""

from __future__ import annotations

import json
import sys
import types
import zlib

import numpy as np
import pytest
import torch

import layerknn
from layerknn import Comparison, compare
from layerknn.cache import Cache


def drifting_model(base: np.ndarray, num_layers: int, noise: float, seed: int) -> np.ndarray:
    """Layers that rotate the same prompts' vectors with depth: similar depths -> similar layers."""
    r = np.random.default_rng(seed)
    half = base.shape[1] // 2
    out = []
    for layer in range(num_layers + 1):
        t = 1.5 * layer / num_layers
        x = np.concatenate([np.cos(t) * base[:, :half], np.sin(t) * base[:, half:]], axis=1)
        out.append(x + noise * r.standard_normal(base.shape))
    return np.stack(out).astype(np.float32)


def test_identical_models_give_unit_diagonal(rng):
    acts = rng.standard_normal((5, 120, 16)).astype(np.float32)
    c = compare(acts, acts, k=7, bootstrap=200)
    np.testing.assert_array_equal(np.diag(c.matrix), 1.0)
    assert c.per_prompt.dtype == np.uint16 and c.per_prompt.shape == (5, 5, 120)
    np.testing.assert_array_equal(c.per_prompt[np.arange(5), np.arange(5)], 7)
    np.testing.assert_array_equal(c.best_match()["a_to_b"], np.arange(5))
    da = c.depth_alignment()
    assert da["spearman_ab"] == pytest.approx(1.0) and da["mean_abs_depth_error"] == 0
    np.testing.assert_array_equal(np.diag(c.ci["matrix_low"]), 1.0)
    assert c.ci["stats"]["spearman_ab"] == (pytest.approx(1.0), pytest.approx(1.0))
    assert c.chance == 7 / 119 and c.k == 7 and c.n == 120
    assert c.verdict()["tracks_depth"]


def test_independent_models_sit_at_chance(rng):
    n, k = 400, 10
    a = rng.standard_normal((8, n, 12)).astype(np.float32)
    b = rng.standard_normal((8, n, 12)).astype(np.float32)
    c = compare(a, b, k=k, bootstrap=300, permutations=50, seed=1)
    chance = k / (n - 1)
    se = np.sqrt(chance * (1 - chance) / (n * k))  # binomial scale of one cell mean
    assert np.all(np.abs(c.matrix - chance) < 6 * se)
    assert abs(c.matrix.mean() - chance) < 2 * se
    # The prompt bootstrap treats prompts as independent, but reciprocal neighbours make
    # overlaps come in pairs, so cell intervals are ~1/sqrt(2) too narrow under this null
    # (coverage ~0.84 instead of 0.95); they still cover chance for most cells.
    covered = (c.ci["matrix_low"] <= chance) & (chance <= c.ci["matrix_high"])
    assert covered.mean() >= 0.7
    for stat in ("near_mean", "far_mean"):
        lo, hi = c.ci["stats"][stat]
        assert lo <= chance <= hi
    assert (c.p_values > 0.05).mean() >= 0.8
    assert not c.verdict()["tracks_depth"]


def test_depth_tracking_synthetic(rng):
    base = rng.standard_normal((300, 32))
    a = drifting_model(base, 12, 0.3, 1)
    b = drifting_model(base, 6, 0.3, 2)
    c = compare(a, b, k=10, names=("deep", "shallow"), bootstrap=200)
    da = c.depth_alignment()
    assert da["spearman_ab"] > 0.8 and da["spearman_ba"] > 0.8
    assert da["near_mean"] > da["far_mean"]
    lo, hi = c.ci["stats"]["spearman_ab"]
    assert lo <= da["spearman_ab"] <= hi
    assert "TRACK" in c.summary() and "deep" in c.summary()
    assert c.names == ("deep", "shallow") and (c.num_layers_a, c.num_layers_b) == (12, 6)
    bm = c.best_match(include_embeddings=False)
    assert bm["layers_a"].tolist() == list(range(1, 13)) and bm["a_to_b"].min() >= 1


def test_inputs_torch_neighbors_and_activations_agree(rng):
    a = rng.standard_normal((3, 80, 8)).astype(np.float32)
    b = rng.standard_normal((4, 80, 8)).astype(np.float32)
    ref = compare(a, b, k=5, bootstrap=0)
    via_torch = compare(torch.from_numpy(a), torch.from_numpy(b), k=5, bootstrap=0)
    via_nbrs = compare(layerknn.knn(a, k=6), layerknn.knn(b, k=6), k=5, bootstrap=0)
    np.testing.assert_array_equal(via_torch.matrix, ref.matrix)
    np.testing.assert_array_equal(via_nbrs.matrix, ref.matrix)
    np.testing.assert_array_equal(ref.matrix, layerknn.overlap(layerknn.knn(a, k=5), layerknn.knn(b, k=5)))
    assert ref.tie_rate_a.shape == (3,) and ref.tie_rate_b.shape == (4,) and ref.ci is None


def test_tie_rate_reports_duplicate_prompts(rng):
    a = rng.standard_normal((2, 60, 8)).astype(np.float32)
    a[0, 30:] = a[0, 0]  # layer 0: half the prompts identical, as for last-token embeddings
    c = compare(a, a, k=3, bootstrap=0)
    assert c.tie_rate_a[0] > 0.4 and c.tie_rate_a[1] == 0
    assert "embeddings" in c.summary()


def test_bad_inputs(rng):
    a = rng.standard_normal((3, 50, 8)).astype(np.float32)
    b = rng.standard_normal((3, 40, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="n=50.*n=40|same prompts"):
        compare(a, b)
    with pytest.raises(ValueError, match="k must be in"):
        compare(a, a, k=50)
    with pytest.raises(ValueError, match="shape \\(layers, n, d\\)"):
        compare(a[0], a)
    with pytest.raises(TypeError, match="k must be an integer"):
        compare(a, a, k=2.5)
    with pytest.raises(ValueError, match="texts is required"):
        compare("model-x", "model-y")
    with pytest.raises(ValueError, match="same prompts"):
        compare(a, a, texts=["x"] * 10)


def test_from_matrix_analyses_and_errors():
    m = np.full((4, 7), 0.1)
    m[np.arange(4), [0, 2, 4, 6]] = 0.5
    c = Comparison.from_matrix(m, n=200, k=10, names=("x", "y"))
    assert c.best_match()["a_to_b"].tolist() == [0, 2, 4, 6]
    assert c.depth_alignment()["spearman_ab"] == pytest.approx(1.0)
    assert "x" in c.summary() and "no bootstrap interval given" in c.summary()
    assert "no permutation p-value given" in c.summary()
    json.dumps(c.to_dict())
    with pytest.raises(ValueError, match="per-prompt"):
        c.bootstrap()
    with pytest.raises(ValueError, match="neighbour lists"):
        c.permutation_test()
    with pytest.raises(ValueError, match="k must be in"):
        Comparison.from_matrix(m, n=10, k=10)
    with pytest.raises(ValueError, match="shape"):
        Comparison.from_matrix(np.ones(5), n=10, k=2)


def test_save_load_round_trip(tmp_path, rng):
    a = rng.standard_normal((3, 90, 8)).astype(np.float32)
    b = rng.standard_normal((5, 90, 8)).astype(np.float32)
    c = compare(a, b, k=4, names=("a", "b"), bootstrap=100, permutations=20)
    c.dataset, c.pooling = "builtin:random-strings?n=90", "last"
    path = c.save(tmp_path / "c.npz")
    with np.load(path, allow_pickle=False) as data:  # readable without pickles
        assert "matrix" in data.files
    back = Comparison.load(path)
    for key in ("matrix", "per_prompt", "neighbors_a", "neighbors_b", "tie_rate_a", "tie_rate_b", "p_values"):
        np.testing.assert_array_equal(getattr(back, key), getattr(c, key))
    np.testing.assert_array_equal(back.ci["matrix_low"], c.ci["matrix_low"])
    assert back.ci["stats"] == c.ci["stats"]
    assert back.summary() == c.summary()
    assert json.loads(json.dumps(back.to_dict())) == json.loads(json.dumps(c.to_dict()))
    np.savez(tmp_path / "other.npz", meta=np.array("{}"), matrix=np.eye(2))
    with pytest.raises(ValueError, match="other.npz.*not a layerknn file"):
        Comparison.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz.*not an .npz archive"):
        Comparison.load(tmp_path / "junk.npz")
    layerknn.zoo([a, b], k=4, bootstrap=0, permutations=0).save(tmp_path / "zoo.npz")
    with pytest.raises(ValueError, match="zoo.npz.*holds a layerknn 'zoo' file, expected 'comparison'"):
        Comparison.load(tmp_path / "zoo.npz")


def test_plots_write_images(tmp_path, rng):
    base = rng.standard_normal((100, 16))
    c = compare(drifting_model(base, 6, 0.3, 1), drifting_model(base, 4, 0.3, 2), k=5, bootstrap=50)
    for path in (c.plot(tmp_path / "h.png"), c.plot_depth(tmp_path / "d.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_zoo_matches_pairwise_compare(tmp_path, rng):
    base = rng.standard_normal((150, 16))
    models = [drifting_model(base, L, 0.4, s) for L, s in ((4, 1), (6, 2), (3, 3))]
    z = layerknn.zoo(models, k=5, cache=False, bootstrap=50, names=["m0", "m1", "m2"])
    assert z.matrix.shape == (5 + 7 + 4, 5 + 7 + 4) and z.offsets == [0, 5, 12]
    np.testing.assert_array_equal(np.diag(z.matrix), 1.0)
    for (i, j), c in z.pairs.items():
        ref = compare(models[i], models[j], k=5, bootstrap=0)
        np.testing.assert_array_equal(c.matrix, ref.matrix)
        np.testing.assert_array_equal(c.per_prompt, ref.per_prompt)
    flipped = z.comparison("m2", "m0")
    np.testing.assert_array_equal(flipped.matrix, z.pairs[(0, 2)].matrix.T)
    grid = z.unit_square(bins=10)
    assert grid.shape == (10, 10) and np.nanmax(grid) <= z.matrix.max()
    # along the depth diagonal similarity is higher than far from it
    gap = np.abs(np.subtract.outer(np.arange(10), np.arange(10)))
    assert np.nanmean(grid[gap <= 1]) > np.nanmean(grid[gap >= 5])
    z.plot_unit_square(tmp_path / "u.png")
    z.plot_matrix(tmp_path / "m.png")
    json.dumps(z.to_dict())
    with pytest.raises(ValueError, match="at least two"):
        layerknn.zoo(models[:1], cache=False)


# -------------------------------------------------------------------------------------------
# the extraction path, with a fake extract module (no transformers involved)


class FakeExtract(types.ModuleType):
    """Stands in for layerknn.extract: deterministic activations per (model name, texts)."""

    def __init__(self):
        super().__init__("layerknn.extract")
        self.calls = []

    def fingerprint_for(self, model, texts, *, pooling="last", max_length=None, chat_template=False, layers=None):
        return f"{model.config._name_or_path}-{len(texts)}-{pooling}-{max_length}"

    def extract(self, model, texts, *, tokenizer=None, pooling="last", device=None, progress=True, **kw):
        name = model.config._name_or_path
        self.calls.append(name)
        seed = zlib.crc32(name.encode())
        values = torch.from_numpy(np.random.default_rng(seed).standard_normal((model.layers + 1, len(texts), 8))
                                  .astype(np.float32))
        return types.SimpleNamespace(values=values, model_name=name, num_layers=model.layers, hidden_size=8,
                                     pooling=pooling, token_counts=torch.ones(len(texts), dtype=torch.int64),
                                     truncated=torch.zeros(len(texts), dtype=torch.bool),
                                     fingerprint=self.fingerprint_for(model, texts, pooling=pooling),
                                     max_length=kw.get("max_length"))


def fake_model(name, layers):
    return types.SimpleNamespace(config=types.SimpleNamespace(_name_or_path=name), layers=layers)


@pytest.fixture
def fake_extract(monkeypatch):
    fake = FakeExtract()
    monkeypatch.setitem(sys.modules, "layerknn.extract", fake)
    monkeypatch.setattr(layerknn, "extract", fake, raising=False)
    return fake


def test_cache_reuses_and_recomputes_only_new_models(tmp_path, fake_extract):
    texts = [f"prompt {i}" for i in range(40)]
    m1, m2, m3 = fake_model("one", 2), fake_model("two", 3), fake_model("three", 4)
    cache = Cache(tmp_path / "cache")
    c1 = compare(m1, m2, texts, k=4, cache=cache, bootstrap=0)
    assert fake_extract.calls == ["one", "two"]
    c2 = compare(m1, m2, texts, k=4, cache=cache, bootstrap=0)
    assert fake_extract.calls == ["one", "two"]  # both from the cache
    np.testing.assert_array_equal(c1.matrix, c2.matrix)
    assert c2.meta["model_a"]["cache"] == "neighbors"
    z = layerknn.zoo([m1, m2, m3], texts, k=4, cache=cache, bootstrap=0)
    assert fake_extract.calls == ["one", "two", "three"]  # only the new model ran
    np.testing.assert_array_equal(z.pairs[(0, 1)].matrix, c1.matrix)
    # a larger k needs more neighbours: recomputed from cached activations, no extraction
    compare(m1, m2, texts, k=6, cache=cache, bootstrap=0)
    assert fake_extract.calls == ["one", "two", "three"]
    # corrupt one neighbour file: warned, recomputed, same answer
    victim = sorted((tmp_path / "cache" / "neighbours").glob("one-*-k5.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.warns(UserWarning, match="unusable"):
        c3 = compare(m1, m2, texts, k=4, cache=cache, bootstrap=0)
    np.testing.assert_array_equal(c3.matrix, c1.matrix)


def test_no_verdict_from_ties_or_a_matrix_without_contrast():
    """Issue 10.1: a constant matrix used to say TRACK (Spearman 1.0 from the diagonal tie rule)."""
    c = Comparison.from_matrix(np.full((13, 19), 0.2), n=100, k=5)
    assert c.verdict()["verdict"] == "undefined" and not c.verdict()["tracks_depth"]
    assert "UNDEFINED" in c.summary() and "TRACK normalised" not in c.summary()
    assert np.isnan(c.depth_alignment()["spearman_ab"])  # best matches: all the lowest index


def test_k_equal_n_minus_one_gives_undefined_not_track(rng):
    """Every cell is 1.0 at k = n - 1: no depth information, so never TRACK (nor a CI lower bound of 1)."""
    a = rng.standard_normal((5, 40, 8)).astype(np.float32)
    b = rng.standard_normal((7, 40, 8)).astype(np.float32)
    c = compare(a, b, k=39, bootstrap=50, permutations=20)
    np.testing.assert_array_equal(c.matrix, 1.0)
    v = c.verdict()
    assert v["verdict"] == "undefined" and any("no contrast" in reason for reason in v["reasons"])


def test_track_needs_the_permutation_test_of_spearman(rng):
    base = rng.standard_normal((200, 24))
    c = compare(drifting_model(base, 8, 0.3, 1), drifting_model(base, 5, 0.3, 2), k=8, bootstrap=100,
                permutations=49)
    assert c.calibration.spearman_p["spearman_min"] == pytest.approx(1 / 50)
    assert c.verdict()["verdict"] == "track" and "permutation p of Spearman" in c.verdict()["basis"]
    shuffled = compare(drifting_model(base, 8, 0.3, 1), drifting_model(base[rng.permutation(200)], 5, 0.3, 2),
                       k=8, bootstrap=100, permutations=49)
    assert shuffled.verdict()["verdict"] != "track"


@pytest.mark.parametrize("measure", ["jaccard", "rank", "cycle", "lcs", "edit"])
def test_other_measures_run_the_same_path(rng, tmp_path, measure):
    base = rng.standard_normal((90, 12))
    a, b = drifting_model(base, 5, 0.3, 1), drifting_model(base, 3, 0.3, 2)
    c = compare(a, b, k=6, measure=measure, bootstrap=30, permutations=9)
    want = layerknn.overlap(layerknn.knn(a, k=6), layerknn.knn(b, k=6), measure=measure)
    np.testing.assert_array_equal(c.matrix, want)
    assert c.per_prompt.dtype == np.float32 and c.per_prompt.max() <= 1
    np.testing.assert_allclose(c.per_prompt.mean(-1), c.matrix, atol=1e-6)
    assert np.all((0 <= c.ci["matrix_low"]) & (c.ci["matrix_high"] <= 1))
    assert f"measure = {measure}" in c.summary() and c.to_dict()["measure"] == measure
    back = Comparison.load(c.save(tmp_path / "m.npz"))
    assert back.measure == measure and back.summary() == c.summary()
    assert c.transpose().measure == measure
    with pytest.raises(ValueError, match="measure must be one of"):
        compare(a, b, k=6, measure="cosine")
