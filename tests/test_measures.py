"""layerknn.overlap(measure=...) against plain-Python references of every neighbourhood measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import layerknn
from conftest import on_device, to_numpy
from layerknn import _core
from layerknn._backend import MEASURE_CODES
from layerknn.overlap import MEASURES

OTHER = [m for m in MEASURES if m != "mutual"]


# ---- plain-Python references, one prompt's two rows at a time ------------------------------

def lcs_ref(x, y):
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, xi in enumerate(x, 1):
        for j, yj in enumerate(y, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if xi == yj else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def levenshtein_ref(x, y):
    table = [[i + j if i * j == 0 else 0 for j in range(len(y) + 1)] for i in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (x[i - 1] != y[j - 1]))
    return table[-1][-1]


def score_ref(measure, a, b, la, lb, i, k):
    """The [0, 1] score of prompt i for layers (la, lb), straight from the definitions."""
    x, y = a[la, i, :k].tolist(), b[lb, i, :k].tolist()
    if measure == "mutual":
        return len(set(x) & set(y)) / k
    if measure == "jaccard":
        return len(set(x) & set(y)) / len(set(x) | set(y))
    if measure == "rank":
        return sum(len(set(x[:d]) & set(y[:d])) / d for d in range(1, k + 1)) / k
    if measure == "cycle":  # is i a neighbour (in a) of one of its neighbours (in b)?
        return float(any(i in a[la, j, :k].tolist() for j in y))
    if measure == "lcs":
        return lcs_ref(x, y) / k
    if measure == "edit":
        return 1 - levenshtein_ref(x, y) / k
    raise AssertionError(measure)


def reference(measure, a, b, k):
    La, n, _ = a.shape
    scores = np.array([[[score_ref(measure, a, b, la, lb, i, k) for i in range(n)]
                        for lb in range(b.shape[0])] for la in range(La)])
    return scores.mean(-1), scores


def neighbour_lists(rng, L, n, width, repeats=False):
    """Ids in [0, n) (prompt indices, as from knn(x)) with frequent sharing between rows.

    With ``repeats`` some rows repeat an id and some prompts copy another prompt's row.
    """
    if repeats:
        out = rng.integers(0, min(n, max(2, width)), size=(L, n, width))
        out[:, n // 2:] = out[:, : n - n // 2]  # duplicated rows
        return out.astype(np.int32)
    pool = np.arange(n)
    return np.stack([np.stack([rng.choice(pool, size=width, replace=False) for _ in range(n)])
                     for _ in range(L)]).astype(np.int32)


def check(measure, a, b, k, device="cpu"):
    ref_mean, ref_scores = reference(measure, a, b, k or min(a.shape[2], b.shape[2]))
    mean, scores = layerknn.overlap(on_device(a, device), on_device(b, device), k, measure=measure,
                                    per_prompt=True)
    only_mean = layerknn.overlap(on_device(a, device), on_device(b, device), k, measure=measure)
    mean, scores, only_mean = to_numpy(mean), to_numpy(scores), to_numpy(only_mean)
    assert mean.dtype == np.float64 and mean.shape == ref_mean.shape
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(only_mean, mean)
    if measure == "mutual":
        assert scores.dtype == np.uint16
        np.testing.assert_array_equal(scores, np.rint(ref_scores * (k or min(a.shape[2], b.shape[2]))))
    else:
        assert scores.dtype == np.float32 and scores.shape == ref_scores.shape
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


# ---- agreement with the references ---------------------------------------------------------

SHAPES = [  # La, Lb, n, ka, kb, k
    (1, 1, 1, 1, 1, None),      # a single prompt and neighbour
    (3, 4, 17, 10, 12, None),   # ka != kb, k = min
    (2, 5, 33, 16, 16, 7),      # k below both widths
    (4, 2, 9, 8, 8, 8),         # k = n - 1
    (2, 3, 13, 1, 1, None),     # k = 1
    (3, 2, 40, 12, 9, 5),       # ka != kb with k given, odd sizes
]


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("La,Lb,n,ka,kb,k", SHAPES)
def test_matches_reference(device, rng, measure, La, Lb, n, ka, kb, k):
    a = neighbour_lists(rng, La, n, ka)
    b = neighbour_lists(rng, Lb, n, kb)
    b[: min(La, Lb), : n // 3, : min(ka, kb)] = a[: min(La, Lb), : n // 3, : min(ka, kb)]  # shared rows
    check(measure, a, b, k, device)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n,width,k", [(12, 6, None), (7, 6, 6), (30, 5, 3), (2, 3, 1)])
def test_repeated_ids_and_duplicated_rows(rng, measure, n, width, k):
    a = neighbour_lists(rng, 3, n, width, repeats=True)
    b = neighbour_lists(rng, 2, n, width, repeats=True)
    check(measure, a, b, k)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("k", [63, 64, 65, 90])
def test_long_rows(rng, measure, k):
    # LCS and edit distance switch from 64-bit column masks to the dynamic programme above k = 64.
    n = 100  # ids are prompt indices in [0, n); only the first 10 prompts vary
    a = np.stack([np.stack([rng.permutation(n)[:k] for _ in range(10)]) for _ in range(2)]).astype(np.int32)
    b = a[::-1].copy()
    b[0, :4] = a[0, :4]                                  # identical rows
    b[1, 4:7] = np.roll(a[1, 4:7], 5, axis=-1)           # same ids, shifted order
    mixed = rng.random(b[1, 7:].shape) < 0.3
    b[1, 7:] = np.where(mixed, a[1, 7:], b[1, 7:])       # partly shared, repeats possible
    a, b = (np.concatenate([x, np.repeat(x[:, :1], n - 10, axis=1)], axis=1) for x in (a, b))
    check(measure, a, b, None)


@pytest.mark.parametrize("measure", MEASURES)
def test_self_join_neighbours(rng, measure):
    x = rng.standard_normal((3, 60, 5)).astype(np.float32)
    y = rng.standard_normal((2, 60, 7)).astype(np.float32)
    check(measure, np.asarray(layerknn.knn(x, 6).indices), np.asarray(layerknn.knn(y, 8).indices), 6)


# ---- fixed points --------------------------------------------------------------------------

@pytest.mark.parametrize("measure", [m for m in MEASURES if m != "cycle"])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_identical_lists_score_one(rng, measure, k):
    a = neighbour_lists(rng, 3, 25, 10)
    mean, scores = layerknn.overlap(a, a, k, measure=measure, per_prompt=True)
    assert (mean.diagonal() == 1.0).all()
    if measure != "mutual":
        assert (scores[np.arange(3), np.arange(3)] == 1.0).all()


def test_cycle_of_identical_lists_needs_reciprocal_neighbours():
    n = 11
    ring = np.array([[(i - 1) % n, (i + 1) % n] for i in range(n)], dtype=np.int32)  # symmetric
    assert layerknn.overlap(ring, ring, measure="cycle") == 1.0
    chain = np.array([[(i + 1) % n] for i in range(n)], dtype=np.int32)  # nobody points back
    assert layerknn.overlap(chain, chain, measure="cycle") == 0.0
    assert layerknn.overlap(chain, chain, measure="mutual") == 1.0


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("k", [1, 5])
def test_disjoint_lists_score_zero(measure, k):
    n = 40  # a lists the k prompts after i, b the k after those: disjoint, and never pointing back
    i = np.arange(n)[:, None]
    a = ((i + 1 + np.arange(k)) % n).astype(np.int32)
    b = ((i + 1 + k + np.arange(k)) % n).astype(np.int32)
    mean, scores = layerknn.overlap(a, b, measure=measure, per_prompt=True)
    assert mean == 0.0 and not scores.any()


def test_hand_computed_values():
    x, y = np.array([[1, 2, 3, 4]]), np.array([[2, 3, 4, 5]])
    got = {m: float(layerknn.overlap(x, y, measure=m)) for m in OTHER if m != "cycle"}
    assert got["jaccard"] == 3 / 5
    assert got["rank"] == pytest.approx((0 + 1 / 2 + 2 / 3 + 3 / 4) / 4, rel=1e-15)
    assert got["lcs"] == 3 / 4      # 2, 3, 4
    assert got["edit"] == 1 - 2 / 4  # delete 1, insert 5


# ---- shapes, types and devices -------------------------------------------------------------

@pytest.mark.parametrize("measure", OTHER)
def test_two_dimensional_inputs(rng, measure):
    a = neighbour_lists(rng, 3, 20, 4)
    b = neighbour_lists(rng, 2, 20, 4)
    full_mean, full_scores = layerknn.overlap(a, b, measure=measure, per_prompt=True)
    mean, scores = layerknn.overlap(a[1], b, measure=measure, per_prompt=True)
    assert mean.shape == (2,) and scores.shape == (2, 20)
    np.testing.assert_array_equal(mean, full_mean[1])
    np.testing.assert_array_equal(scores, full_scores[1])
    mean, scores = layerknn.overlap(a[2], b[0], measure=measure, per_prompt=True)
    assert np.ndim(mean) == 0 and scores.shape == (20,)
    assert mean == full_mean[2, 0]


@pytest.mark.parametrize("measure", OTHER)
def test_torch_in_torch_out_on_the_input_device(device, rng, measure):
    a = neighbour_lists(rng, 2, 15, 4)
    ta = torch.from_numpy(a).long().to(device)
    mean, scores = layerknn.overlap(ta, ta.flip(2), measure=measure, per_prompt=True)
    assert isinstance(mean, torch.Tensor) and mean.dtype == torch.float64
    assert scores.dtype == torch.float32 and scores.shape == (2, 2, 15)
    assert mean.device.type == ta.device.type and scores.device.type == ta.device.type
    np.testing.assert_array_equal(mean.cpu().numpy(), layerknn.overlap(a, a[..., ::-1], measure=measure))


@pytest.mark.parametrize("measure", OTHER)
def test_results_do_not_depend_on_thread_count(rng, measure):
    a = neighbour_lists(rng, 5, 300, 9)
    b = neighbour_lists(rng, 3, 300, 9)
    results = [layerknn.overlap(a, b, 8, measure=measure, per_prompt=True, num_threads=t) for t in (1, 2, 3, 7)]
    for mean, scores in results[1:]:
        np.testing.assert_array_equal(mean, results[0][0])
        np.testing.assert_array_equal(scores, results[0][1])


def test_many_chunks_match_the_counting_engine(rng):
    # (La + Lb) * k * 8 bytes per prompt = 48 KiB: the 16 MiB key budget splits 1000 prompts in 3.
    La, Lb, n, k = 12, 12, 1000, 256
    a = np.stack([np.argsort(rng.random((n, n)), axis=1)[:, :k] for _ in range(La)]).astype(np.int32)
    b = a[::-1].copy()
    b[:, : n // 2] = np.roll(b[:, : n // 2], 3, axis=2)
    mean, counts = _core.overlap_cpu(a, b, k, True)
    for code, expected in ((MEASURE_CODES["mutual"], counts / k),
                           (MEASURE_CODES["jaccard"], counts / (2 * k - counts.astype(np.float64)))):
        got_mean, got = _core.overlap_measure_cpu(a, b, k, code, True, 2)
        np.testing.assert_array_equal(got, expected.astype(np.float32))
        np.testing.assert_allclose(got_mean, expected.mean(-1), rtol=1e-12)
    got_mean, got = _core.overlap_measure_cpu(a, b, k, MEASURE_CODES["cycle"], True, 2)
    hits = np.zeros((La, Lb, n), dtype=bool)
    for la in range(La):
        lists = np.zeros((n, n), dtype=bool)  # lists[j, i]: a's row j lists i
        lists[np.arange(n)[:, None], a[la]] = True
        for lb in range(Lb):
            hits[la, lb] = lists[b[lb], np.arange(n)[:, None]].any(1)
    np.testing.assert_array_equal(got, hits.astype(np.float32))
    np.testing.assert_array_equal(got_mean, hits.mean(-1))


def test_measures_engine_mutual_equals_the_counting_engine(rng):
    a = neighbour_lists(rng, 6, 200, 12, repeats=True)
    b = neighbour_lists(rng, 9, 200, 10)
    mean, counts = _core.overlap_cpu(a, b, 9, True)
    got_mean, got = _core.overlap_measure_cpu(a, b, 9, MEASURE_CODES["mutual"], True, 2)
    np.testing.assert_array_equal(got, (counts / 9).astype(np.float32))
    np.testing.assert_allclose(got_mean, mean, rtol=1e-14)


# ---- bad input -----------------------------------------------------------------------------

def test_rejects_bad_measure():
    a = np.zeros((2, 5, 3), dtype=np.int32)
    with pytest.raises(ValueError, match=r"measure must be one of 'mutual', 'jaccard', 'rank', 'cycle', "
                                         r"'lcs', 'edit'; got 'overlap'"):
        layerknn.overlap(a, a, measure="overlap")
    with pytest.raises(ValueError, match="measure must be one of .*got 'Mutual'"):
        layerknn.overlap(a, a, measure="Mutual")
    with pytest.raises(TypeError, match="measure must be a string.*got int"):
        layerknn.overlap(a, a, measure=1)
    with pytest.raises(ValueError, match="unknown measure code 9"):
        _core.overlap_measure_cpu(a, a, 2, 9, False)


def test_cycle_rejects_ids_that_are_not_prompts():
    a = np.array([[[1, 2], [0, 2], [0, 1]]], dtype=np.int32)
    with pytest.raises(ValueError, match=r"b must hold ids in \[0, n\) = \[0, 2\].*got id 7"):
        layerknn.overlap(a, a + 5, measure="cycle")
    with pytest.raises(ValueError, match=r"a must hold ids in \[0, n\)"):
        layerknn.overlap(a + 1, a, measure="cycle")
    assert layerknn.overlap(a + 1, a, measure="jaccard") == pytest.approx(2 / 9, rel=1e-15)  # any ids
    huge = 2_000_000_000
    assert layerknn.overlap(a + huge, a + huge, measure="rank") == 1.0


@pytest.mark.parametrize("measure", OTHER)
def test_one_hundred_thousand_layers_of_b(measure):
    # Scratch is per thread and per chunk of prompts, never [La, Lb]-sized beyond the outputs.
    import resource

    rng = np.random.default_rng(3)
    La, Lb, n, k = 2, 100_000, 12, 10
    a = rng.integers(0, n, (La, n, k), dtype=np.int32)
    b = rng.integers(0, n, (Lb, n, k), dtype=np.int32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mean, scores = layerknn.overlap(a, b, measure=measure, per_prompt=True)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 256 << 20, f"peak RSS grew by {grown / 2**20:.0f} MiB"  # inputs + outputs ~ 15 MB
    for la, lb in [(0, 0), (1, 63), (0, 64), (1, 50_000), (1, Lb - 1)]:
        expected = [score_ref(measure, a, b, la, lb, i, k) for i in range(n)]
        np.testing.assert_array_equal(scores[la, lb], np.float32(expected))
        assert mean[la, lb] == pytest.approx(np.mean(expected), rel=1e-12)
