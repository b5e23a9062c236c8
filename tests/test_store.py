"""layerknn.store: the one on-disk format (errors name the file, never unpickle) and atomic output folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerknn import store


@pytest.fixture
def good(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.int32).reshape(3, 4), "b": np.linspace(0, 1, 5)}
    return store.write(tmp_path / "good.npz", arrays, {"answer": 42}, kind="demo"), arrays


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    arrays = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32), "y": np.zeros(0)}
    path = store.write(tmp_path / f"f{suffix}", arrays, {"nested": {"list": [1, 2]}}, kind="demo")
    back, meta = store.read(path, kind="demo")
    assert meta == {"nested": {"list": [1, 2]}}
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def damage_garbage(path):
    path.write_bytes(b"\x00garbage" * 20)


def damage_empty(path):
    path.write_bytes(b"")


def damage_flip(path):
    raw = bytearray(path.read_bytes())
    pos = raw.find(np.arange(12, dtype=np.int32).tobytes())
    raw[pos + 5] ^= 0x40
    path.write_bytes(bytes(raw))


def damage_foreign(path):
    np.savez(path, matrix=np.eye(2))


def damage_pickle(path):
    np.savez(path, obj=np.array([{"evil": 1}], dtype=object))


def damage_kind(path):
    store.write(path, {"a": np.zeros(2)}, {}, kind="other")


def damage_version(path):
    header = json.dumps({"format": "layerknn", "kind": "demo", "version": 99, "sha256": store.checksum({}),
                         "meta": {}})
    np.savez(path, __layerknn__=np.array(header))


@pytest.mark.parametrize("damage,pattern", [
    (damage_truncate, "not a readable layerknn file"), (damage_garbage, "not an .npz archive"),
    (damage_empty, "not an .npz archive"), (damage_flip, "checksum|not a readable"),
    (damage_foreign, "no __layerknn__ header"), (damage_pickle, "no __layerknn__ header"),
    (damage_kind, "holds a layerknn 'other' file, expected 'demo'"), (damage_version, "format version 99"),
])
def test_every_damage_is_a_format_error_naming_the_file(good, damage, pattern):
    path, _ = good
    damage(path)
    with pytest.raises(store.FormatError, match=pattern) as info:
        store.read(path, kind="demo")
    assert str(path) in str(info.value)
    assert "allow_pickle" not in str(info.value)  # numpy's advice is wrong here: we never unpickle
    assert isinstance(info.value, ValueError)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        store.read(tmp_path / "nothing.npz", kind="demo")
    with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
        store.write(tmp_path / "x.pkl", {}, {}, kind="demo")


def test_interrupted_write_keeps_the_old_file(good, monkeypatch):
    path, arrays = good
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write(path, {"a": np.zeros(1)}, {}, kind="demo")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["good.npz"]


# ----------------------------------------------------------------------------------- output folders

def test_output_folder_replaces_a_previous_set_whole(tmp_path):
    out = tmp_path / "out"
    with store.output_folder(out) as tmp:
        (tmp / "report.json").write_text("old")
        (tmp / "old-only.png").write_text("old")
    with store.output_folder(out, {"k": 10}) as tmp:
        (tmp / "report.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "report.json"]
    assert (out / "report.json").read_text() == "new"
    assert json.loads((out / store.MANIFEST).read_text())["k"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folders left


def test_interrupt_leaves_the_old_complete_set(tmp_path):
    out = tmp_path / "out"
    with store.output_folder(out) as tmp:
        for name in ("heatmap.png", "report.json", "summary.txt"):
            (tmp / name).write_text("k=9")
    with pytest.raises(KeyboardInterrupt):
        with store.output_folder(out) as tmp:
            (tmp / "heatmap.png").write_text("k=10")
            raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != store.MANIFEST} == \
        {"heatmap.png": "k=9", "report.json": "k=9", "summary.txt": "k=9"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_folders_it_did_not_write(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="did not write"):
        with store.output_folder(foreign):
            pass
    assert (foreign / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        store.check_output_folder(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    store.check_output_folder(tmp_path / "empty")  # an empty folder is fine
