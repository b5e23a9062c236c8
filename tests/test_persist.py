"""Comparison and Zoo files: tampering is caught by the checksum, impossible values by the value checks."""

from __future__ import annotations

import numpy as np
import pytest

import layerknn
from layerknn import Comparison, store
from layerknn.persist import comparison_arrays


@pytest.fixture
def saved(tmp_path, rng):
    a = rng.standard_normal((3, 60, 8)).astype(np.float32)
    b = rng.standard_normal((4, 60, 8)).astype(np.float32)
    c = layerknn.compare(a, b, k=4, bootstrap=20, permutations=10)
    return c, c.save(tmp_path / "c.npz")


def rewrite(path, edit):
    """Re-save the file with edited arrays/meta and a *valid* checksum (a buggy tool, not bit rot)."""
    arrays, meta = store.read(path, kind="comparison")
    arrays, meta = edit(dict(arrays), dict(meta))
    store.write(path, arrays, meta, kind="comparison")


def test_an_edited_matrix_is_caught(saved):
    c, path = saved
    arrays, _ = store.read(path, kind="comparison")
    raw = bytearray(path.read_bytes())
    pos = raw.find(arrays["matrix"].tobytes()[:32])
    raw[pos + 3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="c.npz"):
        Comparison.load(path)


def test_a_matrix_that_disagrees_with_its_neighbours_is_refused(saved):
    c, path = saved
    rewrite(path, lambda a, m: ({**a, "matrix": np.clip(a["matrix"] + 0.01, 0, 1)}, m))
    with pytest.raises(ValueError, match="c.npz.*disagrees with its neighbour lists"):
        Comparison.load(path)


def test_counts_above_k_are_refused_so_bootstrap_cannot_exceed_one(tmp_path):
    n, k = 30, 3
    counts = np.full((2, 2, n), 2, dtype=np.uint16)
    arrays, meta = comparison_arrays(Comparison(counts.sum(-1) / (n * k), n=n, k=k, per_prompt=counts))
    counts[0, 0, :10] = k + 2  # impossible: at most k shared neighbours
    arrays["per_prompt"], arrays["matrix"] = counts, counts.sum(-1) / (n * k)
    assert arrays["matrix"].max() <= 1
    with pytest.raises(ValueError, match="per_prompt must hold counts in \\[0, k\\]"):
        Comparison(arrays["matrix"], n=n, k=k, per_prompt=counts)
    store.write(tmp_path / "bad.npz", arrays, meta, kind="comparison")
    with pytest.raises(ValueError, match="bad.npz.*counts in \\[0, k=3\\]"):
        Comparison.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("field,value,pattern", [
    ("null_p_values", lambda a: a["null_p_values"] * 0, "p-values must lie in \\(0, 1\\]"),
    ("null_observed", lambda a: a["null_observed"] * 0.5, "calibration was computed on another matrix"),
    ("neighbors_a", lambda a: a["neighbors_a"] + 1000, "neighbors_a must be indices"),
    ("matrix", lambda a: np.full_like(a["matrix"], 1.5), "values must lie in \\[0, 1\\]"),
])
def test_impossible_values_are_refused(saved, field, value, pattern):
    _, path = saved
    rewrite(path, lambda a, m: ({**a, field: value(a)}, m))
    with pytest.raises(ValueError, match=pattern):
        Comparison.load(path)


def test_missing_metadata_names_the_file(saved):
    _, path = saved
    rewrite(path, lambda a, m: (a, {key: v for key, v in m.items() if key != "num_layers"}))
    with pytest.raises(ValueError, match="c.npz.*not a valid layerknn comparison"):
        Comparison.load(path)


def test_zoo_p_values_are_checked(tmp_path, rng):
    acts = [rng.standard_normal((3, 40, 6)).astype(np.float32) for _ in range(3)]
    path = layerknn.zoo(acts, k=3, bootstrap=0, permutations=5).save(tmp_path / "z.npz")
    arrays, meta = store.read(path, kind="zoo")
    arrays["null_0_2_p_values"] = arrays["null_0_2_p_values"] + 1
    store.write(path, arrays, meta, kind="zoo")
    with pytest.raises(ValueError, match="z.npz \\(pair 0,2\\): p-values must lie in"):
        layerknn.Zoo.load(path)
