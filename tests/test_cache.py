"""layerknn.cache: hits, misses, k_max reuse, corruption and request checks, atomic writes, unwritable folders."""

from __future__ import annotations

import numpy as np
import pytest

from layerknn import store
from layerknn.cache import Cache, CacheCorruptionWarning, CacheUnavailableWarning, default_cache_dir


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
    assert not list(tmp_path.rglob("*.tmp"))


def test_activations_round_trip(tmp_path):
    c = Cache(tmp_path)
    values = np.random.default_rng(1).standard_normal((4, 10, 3)).astype(np.float32)
    c.put_activations("fpA", values, {"num_layers": 3}, {"token_counts": np.arange(10)})
    hit = c.get_activations("fpA", n=10)
    np.testing.assert_array_equal(hit["values"], values)
    np.testing.assert_array_equal(hit["token_counts"], np.arange(10))
    assert hit["meta"]["num_layers"] == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_files_are_detected_and_dropped(tmp_path, damage):
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    path = tmp_path / "neighbours" / "fp-k6.npz"
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
    with pytest.warns(CacheCorruptionWarning, match="unusable"):
        assert c.get_neighbors("fp", 6) is None
    assert not path.exists()  # dropped, so the next run recomputes and rewrites it
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    np.testing.assert_array_equal(c.get_neighbors("fp", 6)["indices"], idx)


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    entry = tmp_path / "neighbours" / "fp-k6.npz"
    before = entry.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        c.put_neighbors("fp", idx[..., ::-1], sc, {"num_layers": 2})
    with pytest.raises(KeyboardInterrupt):
        c.put_activations("new", np.zeros((2, 3, 4), np.float32), {})
    monkeypatch.undo()
    assert entry.read_bytes() == before  # old entry intact
    assert not (tmp_path / "activations" / "new.npz").exists()
    assert not list(tmp_path.rglob(".*tmp"))


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
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kept.bin").write_text("dequantised model")
    assert c.clear() == 2
    assert (tmp_path / "unrelated.txt").exists() and (tmp_path / "models" / "kept.bin").exists()
    assert c.get_neighbors("a", 6) is None


def test_malformed_meta_is_corrupt_and_removed(tmp_path):
    """Valid JSON that is not an object used to crash every rerun and was never removed."""
    c = Cache(tmp_path)
    idx, sc = nbrs()
    path = tmp_path / "neighbours" / "fp-k6.npz"
    path.parent.mkdir(parents=True)
    header = '{"format": "layerknn", "kind": "neighbours", "version": 1, "sha256": "%s", "meta": [1, 2]}' % \
        store.checksum({"indices": idx, "scores": sc})
    np.savez(path, __layerknn__=np.array(header), indices=idx, scores=sc)
    with pytest.warns(CacheCorruptionWarning, match="not a JSON object"):
        assert c.get_neighbors("fp", 6) is None
    assert not path.exists()
    link = tmp_path / "links" / "key.npz"
    store.write(link, {}, {"fingerprint": ["not", "a", "string"]}, kind="link")
    with pytest.warns(CacheCorruptionWarning, match="fingerprint"):
        assert c.get_link("key") is None
    assert not link.exists()


@pytest.mark.parametrize("request_", [{"n": 21}, {"num_layers": 5}])
def test_entry_is_checked_against_the_request(tmp_path, request_):
    """An entry of 20 prompts (or 3 layers) must never serve a request for other sizes."""
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("fp", idx, sc, {"num_layers": 2})
    with pytest.warns(CacheCorruptionWarning, match="the request has"):
        assert c.get_neighbors("fp", 6, **request_) is None
    c.put_activations("fa", np.zeros((3, 10, 2), np.float32), {"num_layers": 2})
    with pytest.warns(CacheCorruptionWarning, match="n=64"):
        assert c.get_activations("fa", n=64) is None


def test_entry_under_another_fingerprint_is_refused(tmp_path):
    c = Cache(tmp_path)
    idx, sc = nbrs()
    c.put_neighbors("one", idx, sc, {"num_layers": 2})
    (tmp_path / "neighbours" / "one-k6.npz").rename(tmp_path / "neighbours" / "two-k6.npz")
    with pytest.warns(CacheCorruptionWarning, match="fingerprint"):
        assert c.get_neighbors("two", 6) is None


def test_read_only_cache_degrades_to_uncached_with_one_warning(tmp_path):
    import os
    import warnings

    if os.geteuid() == 0:  # root ignores permission bits: make the root a file instead
        root = tmp_path / "file-not-folder"
        root.write_text("x")
    else:
        root = tmp_path / "ro"
        root.mkdir(mode=0o500)
    c = Cache(root)
    idx, sc = nbrs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c.put_neighbors("fp", idx, sc, {"num_layers": 2})
        c.put_activations("fp", np.zeros((3, 20, 2), np.float32), {"num_layers": 2})
        assert c.partial_folder("fp") is None
    assert [w.category for w in caught] == [CacheUnavailableWarning]
    assert not c.writable and c.get_neighbors("fp", 6) is None
