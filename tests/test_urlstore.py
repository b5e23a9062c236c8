"""The cache and the on-disk format under an fsspec URL root (``memory://``, ``file://``): a zoo through
the URL store equals one through a plain folder bit for bit, a rerun recomputes nothing, a truncated or
corrupted object is detected and recomputed, and an unknown protocol or a missing backend is named."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models  # noqa: E402
from layerknn import store  # noqa: E402
from layerknn.cache import Cache, CacheCorruptionWarning, local_cache_dir  # noqa: E402
from layerknn.zoo import zoo  # noqa: E402

fsspec = pytest.importorskip("fsspec")

TEXTS = [f"prompt {i}: " + "abc xyz "[: i % 8] * (1 + i % 3) + str(i * 7) for i in range(22)]
STATS = {"bootstrap": 20, "permutations": 10, "seed": 3}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return tiny_models.save_models(tmp_path_factory.mktemp("url-models"), (("gpt2", 4), ("llama", 5)))


@pytest.fixture(scope="module")
def expected(model_dirs, tmp_path_factory):
    """The zoo through a plain cache folder, the reference for every URL root."""
    return zoo(model_dirs, TEXTS, k=3, cache=tmp_path_factory.mktemp("plain-cache"), **STATS)


@pytest.fixture
def memory_root():
    root = f"memory://layerknn-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs, key = store.filesystem(root)
    if fs.exists(key):
        fs.rm(key, recursive=True)


def entry_urls(root: str, kind: str) -> list[str]:
    folder = Cache(root).folder(kind)
    return sorted(f"{folder}/{name}" for name in Cache._names(folder) if not name.startswith("."))


def test_store_round_trip_and_damage_under_a_url(memory_root):
    rng = np.random.default_rng(0)
    arrays = {"values": rng.standard_normal((3, 7, 5)).astype(np.float32), "ids": np.arange(9, dtype=np.int64)}
    for suffix in (".npz", ".safetensors"):
        url = f"{memory_root}/sub/entry{suffix}"
        assert store.write(url, arrays, {"note": suffix}, kind="demo") == url
        got, meta = store.read(url, kind="demo")
        assert meta == {"note": suffix} and all(np.array_equal(got[k], arrays[k]) for k in arrays)
        fs, key = store.filesystem(url)
        assert [p for p in fs.ls(key.rpartition("/")[0], detail=False) if p.endswith(".tmp")] == []
        data = fs.cat_file(key)
        for damaged in (data[: len(data) // 2], data[:-9], bytes(b ^ 0xFF if i == len(data) // 2 else b
                                                                for i, b in enumerate(data))):
            fs.pipe_file(key, damaged)
            with pytest.raises(store.FormatError, match=f"entry{suffix}"):
                store.read(url, kind="demo")
    with pytest.raises(FileNotFoundError, match="no layerknn demo file"):
        store.read(f"{memory_root}/absent.npz", kind="demo")


def test_a_failed_write_leaves_no_object(memory_root, monkeypatch):
    fs, _ = store.filesystem(memory_root)

    def broken_mv(*args, **kwargs):
        raise OSError("store went away")

    monkeypatch.setattr(type(fs), "mv", broken_mv)
    with pytest.raises(OSError, match="store went away"):
        store.write(f"{memory_root}/x/y.npz", {"a": np.zeros(3)}, {}, kind="demo")
    assert fs.find(store.filesystem(memory_root)[1]) == []  # neither the entry nor its temporary key


def test_unknown_protocol_and_missing_backend_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown protocol 'nosuchfs'"):
        Cache("nosuchfs://bucket/layerknn")
    with pytest.raises(ValueError, match="unknown protocol 'nosuchfs'"):
        store.read("nosuchfs://bucket/x.npz", kind="demo")
    from layerknn.cli import main

    np.savez(tmp_path / "m0.npz", values=np.random.default_rng(0).standard_normal((3, 12, 4)).astype(np.float32))
    np.savez(tmp_path / "m1.npz", values=np.random.default_rng(1).standard_normal((3, 12, 4)).astype(np.float32))
    args = ["zoo", str(tmp_path / "m0.npz"), str(tmp_path / "m1.npz"), "--k", "2", "--no-progress"]
    assert main([*args, "--cache-dir", "nosuchfs://bucket/x", "--out", str(tmp_path / "out")]) == 2
    assert "'nosuchfs'" in capsys.readouterr().err and not (tmp_path / "out").exists()
    from fsspec.registry import known_implementations

    packages = {p: spec["class"].split(".")[0] for p, spec in known_implementations.items()
                if p in ("gs", "s3", "abfs", "oci", "box")}
    absent = [(p, pkg) for p, pkg in sorted(packages.items()) if importlib.util.find_spec(pkg) is None]
    if not absent:
        pytest.skip("every object-store backend tried here is installed")
    protocol, package = absent[0]
    with pytest.raises(ImportError, match=rf"protocol '{protocol}'.*pip install {package}"):
        Cache(f"{protocol}://bucket/layerknn")
    assert main([*args, "--cache-dir", f"{protocol}://bucket/x", "--out", str(tmp_path / "out")]) == 3
    assert f"pip install {package}" in capsys.readouterr().err


def test_local_cache_dir_follows_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", (tmp_path / "root").as_uri())
    assert local_cache_dir() == tmp_path / "root"  # a file:// root is a folder: dequantised models live there
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", "memory://somewhere")
    assert local_cache_dir() != tmp_path / "root" and local_cache_dir().name == "layerknn"
    assert Cache().path == "memory://somewhere" and Cache().partial_folder("abc") is None


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_zoo_through_a_url_store_equals_a_plain_folder(scheme, model_dirs, expected, tmp_path, memory_root):
    root = memory_root if scheme == "memory" else (tmp_path / "url-cache").as_uri()
    first = zoo(model_dirs, TEXTS, k=3, cache=root, **STATS)
    tiny_models.assert_same_zoo(expected, first)
    assert [u["cache"] for u in first.meta["units"]] == ["miss", "miss"]
    assert len(entry_urls(root, "neighbours")) == 2 and len(entry_urls(root, "activations")) == 2
    if scheme == "file":  # the same store seen as a plain folder: the very same entries
        plain = Cache(tmp_path / "url-cache")
        fingerprint = store.read(entry_urls(root, "neighbours")[0], kind="neighbours")[1]["fingerprint"]
        assert plain.get_neighbors(fingerprint, 4, n=len(TEXTS)) is not None

    rerun = zoo(model_dirs, TEXTS, k=3, cache=root, **STATS)  # nothing recomputed: every unit from the store
    assert [u["cache"] for u in rerun.meta["units"]] == ["neighbors", "neighbors"]
    tiny_models.assert_same_zoo(expected, rerun)

    # model 0: its neighbour entry cut short; model 1: neighbours gone and activations corrupted
    fs, _ = store.filesystem(root)
    neighbours = {store.read(u, kind="neighbours")[1]["model_name"]: u for u in entry_urls(root, "neighbours")}
    activations = {store.read(u, kind="activations")[1]["model_name"]: u for u in entry_urls(root, "activations")}
    names = [os.path.basename(p) for p in model_dirs]
    key0 = store.filesystem(neighbours[names[0]])[1]
    fs.pipe_file(key0, fs.cat_file(key0)[:-40])
    fs.rm(store.filesystem(neighbours[names[1]])[1])
    key1 = store.filesystem(activations[names[1]])[1]
    data = bytearray(fs.cat_file(key1))
    data[len(data) // 2] ^= 0x55
    fs.pipe_file(key1, bytes(data))
    with pytest.warns(CacheCorruptionWarning) as caught:
        healed = zoo(model_dirs, TEXTS, k=3, cache=root, **STATS)
    messages = " ".join(str(w.message) for w in caught)
    assert key0.rpartition("/")[2] in messages and key1.rpartition("/")[2] in messages
    assert [u["cache"] for u in healed.meta["units"]] == ["activations", "miss"]
    tiny_models.assert_same_zoo(expected, healed)
    for kind in ("neighbours", "activations"):
        for url in entry_urls(root, kind):
            store.read(url, kind=kind)  # every entry is whole again
