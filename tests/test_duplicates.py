"""Layers of exactly repeated rows (python/layerknn/_duplicates.py): layerknn.knn searches them by
their distinct rows and must return the plain engine's bits (indices and scores) every time."""

from __future__ import annotations

import numpy as np
import pytest

import layerknn
from layerknn import _core, _duplicates

METRIC_CODES = {"ip": 0, "cosine": 1, "l2": 2}


def plain(x, k, metric, exclude_self=True):
    """The engine without the distinct-row path."""
    return _core.knn_cpu(x, None, k, METRIC_CODES[metric], exclude_self, 2)


def repeated_layers(rng, L, n, d, distinct):
    """Layers drawn from `distinct` rows each (so groups of identical rows), one plain layer,
    one of small integer rows (exact score ties between different rows too), and a
    near-duplicate of the largest group's row one float step away."""
    base = rng.standard_normal((L, distinct, d)).astype(np.float32)
    x = base[:, rng.integers(0, distinct, n)].copy()
    x[1] = rng.standard_normal((n, d))
    x[2, : n // 2] = rng.choice([-2.0, -1.0, 1.0, 2.0], (n // 2, d))
    x[0, -1] = np.nextafter(x[0, 0], np.float32(np.inf))
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("n,d,distinct", [(64, 5, 2), (300, 17, 7), (257, 1, 3), (500, 33, 12)])
def test_distinct_row_search_is_bit_identical(rng, metric, n, d, distinct):
    x = repeated_layers(rng, 3, n, d, distinct)
    assert _duplicates.repeated_rows(x[0]) is not None  # the path under test is taken
    for k in (1, 4, 11, n - 1):
        got = layerknn.knn(x, k, metric=metric)
        want = plain(x, k, metric)
        assert (np.asarray(got.indices) == want[0]).all(), k
        assert (np.asarray(got.scores) == want[1]).all(), k
    got = layerknn.knn(x, 6, metric=metric, exclude_self=False)
    want = plain(x, 6, metric, exclude_self=False)
    assert (np.asarray(got.indices) == want[0]).all() and (np.asarray(got.scores) == want[1]).all()


def test_torch_input_takes_the_same_path(rng):
    torch = pytest.importorskip("torch")
    x = repeated_layers(rng, 3, 200, 8, 4)
    got = layerknn.knn(torch.from_numpy(x), 5)
    want = plain(x, 5, "cosine")
    assert isinstance(got.indices, torch.Tensor)
    assert (got.indices.numpy() == want[0]).all() and (got.scores.numpy() == want[1]).all()


def test_repeated_rows_groups_identical_bits_only(rng):
    x = rng.standard_normal((3, 6)).astype(np.float32)
    layer = x[[0, 1, 0, 2, 1] + [0] * 40]
    layer[4] = np.nextafter(layer[1], np.float32(0))  # one float step: a different row
    groups = _duplicates.repeated_rows(layer)
    assert groups is not None
    assert groups.first.tolist() == [0, 1, 3, 4]
    assert groups.group.tolist()[:5] == [0, 1, 0, 2, 3]
    assert groups.of(0).tolist() == [0, 2] + list(range(5, 45))
    assert groups.size(np.arange(4)).tolist() == [42, 1, 1, 1]


def test_layers_without_a_large_group_are_left_to_the_engine(rng):
    x = rng.standard_normal((100, 4)).astype(np.float32)
    x[: _duplicates.MIN_GROUP - 1] = x[0]  # one short of the threshold
    assert _duplicates.repeated_rows(x) is None
    x[_duplicates.MIN_GROUP - 1] = x[0]
    assert _duplicates.repeated_rows(x) is not None
    # Equal first two features but different rows: the probe passes, the full check does not.
    y = rng.standard_normal((100, 4)).astype(np.float32)
    y[:, :2] = 1.0
    assert _duplicates.repeated_rows(y) is None


def test_progress_counts_every_layer_once(rng):
    x = repeated_layers(rng, 3, 120, 6, 3)
    seen = []
    layerknn.knn(x, 3, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3, 3)
    assert all(total == 3 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_bad_row_in_a_repeated_layer_is_named_in_the_callers_terms(rng):
    # The distinct-row search sees other row numbers; the error must still name the caller's.
    x = repeated_layers(rng, 3, 120, 6, 3)
    group = np.flatnonzero(x[0, :, 0] == x[0, 5, 0])
    x[0, group] = 0.0  # row 5's whole group becomes zero rows
    with pytest.raises(ValueError, match=rf"\(layer 0, row {group[0]}\)"):
        layerknn.knn(x, 3)


def test_repeated_layers_between_plain_ones(rng):
    # Plain layers 0, 2, 3 around a repeated layer 1: gathered, searched, put back in place.
    x = rng.standard_normal((4, 150, 9)).astype(np.float32)
    x[1] = repeated_layers(rng, 3, 150, 9, 3)[0]
    assert [_duplicates.repeated_rows(layer) is not None for layer in x] == [False, True, False, False]
    got = layerknn.knn(x, 7)
    want = plain(x, 7, "cosine")
    assert (np.asarray(got.indices) == want[0]).all() and (np.asarray(got.scores) == want[1]).all()
