"""layerknn.cache: hits, misses, k_max reuse, corruption/truncation detection, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from layerknn import cache as cache_mod
from layerknn.cache import Cache, CacheCorruptionWarning, default_cache_dir


def nbrs(seed=0, L=3, n=20, k=6):
    rng = np.random.default_rng(seed)
    idx = np.stack([np.stack([rng.permutation(n)[:k] for _ in range(n)]) for _ in range(L)]).astype(np.int32)
    return idx, -np.sort(-rng.random((L, n, k)), axis=-1).astype(np.float32)


def test_miss_then_hit(tmp_path):
    c = Cache(tmp_path)
    assert c.get_neighbors("fp1", 5) is None and c.get_activations("fp1") is None
    idx, sc = nbrs()
    c.put_neighbors("fp1", idx, sc, {"model_name": "m", "num_layers": 2})
    hit = c.get_neighbors("fp1", 6)
    np.testing.assert_array_equal(hit["indices"], idx)
    np.testing.assert_array_equal(hit["scores"], sc)
    assert hit["meta"]["model_name"] == "m" and hit["meta"]["k_max"] == 6
    small = c.get_neighbors("fp1", 3)  # a bigger stored k serves a smaller one
    np.testing.assert_array_equal(small["indices"], idx[..., :3])
    assert c.get_neighbors("fp1", 7) is None  # needs more columns than stored
    assert c.get_neighbors("fp2", 3) is None  # other fingerprint
    assert not list(tmp_path.glob("*.tmp"))


def test_activations_round_trip(tmp_path):
    c = Cache(tmp_path)
    values = np.random.default_rng(1).standard_normal((4, 10, 3)).astype(np.float32)
    c.put_activations("fpA", values, {"num_layers": 3}, {"token_counts": np.arange(10)})
    hit = c.get_activations("fpA")
    np.testing.assert_array_equal(hit["values"], values)
    np.testing.assert_array_equal(hit["token_counts"], np.arange(10))
    assert hit["meta"]["num_layers"] == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_files_are_detected_and_dropped(tmp_path, damage):
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    path = next(tmp_path.glob("nbrs-fp-k6.npz"))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # change one payload byte inside the stored indices array
        pos = raw.find(idx.tobytes()[:64])
        assert pos > 0
        raw[pos + 10] ^= 0xFF
    else:
        raw = bytearray(b"\x00" * 100)
    path.write_bytes(bytes(raw))
    with pytest.warns(CacheCorruptionWarning, match="corrupt or truncated"):
        assert c.get_neighbors("fp", 6) is None
    assert not path.exists()  # dropped, so the next run recomputes and rewrites it
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    np.testing.assert_array_equal(c.get_neighbors("fp", 6)["indices"], idx)


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    before = (tmp_path / "nbrs-fp-k6.npz").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        c.put_neighbors("fp", idx[..., ::-1], sc, {"num_layers": 2})
    with pytest.raises(KeyboardInterrupt):
        c.put_activations("new", np.zeros((2, 3, 4), np.float32), {})
    monkeypatch.undo()
    assert (tmp_path / "nbrs-fp-k6.npz").read_bytes() == before  # old entry intact
    assert not (tmp_path / "acts-new.npz").exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_default_dir_and_bad_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert Cache().path == tmp_path / "env"
    monkeypatch.delenv("LAYERKNN_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == (".cache", "layerknn")
    with pytest.raises(ValueError, match="cache key"):
        Cache(tmp_path).get_activations("../escape")


def test_clear(tmp_path):
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("a", idx, sc, {})
    c.put_activations("a", np.zeros((1, 2, 2), np.float32), {})
    (tmp_path / "unrelated.txt").write_text("keep")
    assert c.clear() == 2
    assert (tmp_path / "unrelated.txt").exists()
