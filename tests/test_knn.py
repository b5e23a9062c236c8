"""layerknn.knn against a NumPy float64 reference, on every available device.

Fresh random inputs each run (seeded by pytest's node id for reproducibility of failures),
covering odd sizes, n=2, k=1, k=n-1, d=1, L=1, duplicate rows, exact ties, all metrics, the cross
form, non-contiguous and low-precision inputs; plus every bad-input error.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

import layerknn
from conftest import on_device, to_numpy
from reference import assert_neighbors_exact, reference_knn


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize(
    "L,n,d,k",
    [(1, 2, 1, 1), (2, 3, 5, 2), (3, 37, 7, 1), (2, 64, 33, 10), (1, 101, 17, 100), (2, 257, 65, 16)],
)
def test_matches_float64_reference(device, rng, metric, L, n, d, k):
    x = rng.standard_normal((L, n, d)).astype(np.float32)
    nbrs = layerknn.knn(on_device(x, device), k, metric=metric)
    assert_neighbors_exact(to_numpy(nbrs.indices), to_numpy(nbrs.scores), x, k, metric)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_cross_form_searches_y(device, rng, metric):
    x = rng.standard_normal((2, 19, 12)).astype(np.float32)
    y = rng.standard_normal((2, 31, 12)).astype(np.float32)
    for k in (1, 7, 31):
        nbrs = layerknn.knn(on_device(x, device), k, metric=metric, y=on_device(y, device))
        assert_neighbors_exact(to_numpy(nbrs.indices), to_numpy(nbrs.scores), x, k, metric, y=y)


def test_include_self_finds_self_first(device, rng):
    x = rng.standard_normal((1, 30, 6)).astype(np.float32)
    nbrs = layerknn.knn(on_device(x, device), 30, exclude_self=False)
    assert (to_numpy(nbrs.indices)[0, :, 0] == np.arange(30)).all()


def test_duplicate_rows_are_neighbours_not_dropped(device, rng):
    base = rng.standard_normal((10, 8)).astype(np.float32)
    x = np.concatenate([base, base, base])  # rows i, i+10, i+20 identical
    nbrs = layerknn.knn(on_device(x, device), 2)
    idx = to_numpy(nbrs.indices)
    for i in range(30):
        twins = sorted({i % 10, i % 10 + 10, i % 10 + 20} - {i})
        assert idx[i].tolist() == twins, (i, idx[i])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_ties_break_by_lower_index(device, rng, metric):
    # Small integers: every score is exact in float32, so the full order is determined by
    # (score, then lower index) and must be reproduced exactly.
    x = rng.integers(-2, 3, size=(3, 80, 4)).astype(np.float32)
    x[x.sum(-1) == 0] += 1  # no zero rows (irrelevant for ip/l2 but keeps data varied)
    for k in (1, 5, 79):
        nbrs = layerknn.knn(on_device(x, device), k, metric=metric)
        expected, _ = reference_knn(x, k, metric)
        np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)


def test_cosine_ties_from_scaled_copies(device):
    # Positive multiples of a vector have identical normalised rows, hence tied cosine scores.
    x = np.array([[1, 0], [2, 0], [0, 1], [3, 0], [0, 5], [4, 0]], dtype=np.float32)
    nbrs = layerknn.knn(on_device(x, device), 3)
    assert to_numpy(nbrs.indices)[0].tolist() == [1, 3, 5]
    assert to_numpy(nbrs.indices)[5].tolist() == [0, 1, 3]


def test_two_dimensional_input_gives_two_dimensional_output(device, rng):
    x = rng.standard_normal((20, 4)).astype(np.float32)
    nbrs = layerknn.knn(on_device(x, device), 3)
    assert tuple(nbrs.indices.shape) == (20, 3)
    expected = to_numpy(layerknn.knn(on_device(x[None], device), 3).indices)[0]
    np.testing.assert_array_equal(to_numpy(nbrs.indices), expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_numpy_dtypes_are_converted(rng, dtype):
    x = rng.standard_normal((2, 40, 9)).astype(dtype)
    nbrs = layerknn.knn(x, 4)
    assert isinstance(nbrs.indices, np.ndarray)
    assert_neighbors_exact(nbrs.indices, nbrs.scores, x.astype(np.float32), 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_torch_dtypes_return_torch(rng, dtype):
    x = torch.from_numpy(rng.standard_normal((2, 40, 9))).to(dtype)
    nbrs = layerknn.knn(x, 4)
    assert isinstance(nbrs.indices, torch.Tensor) and nbrs.indices.dtype == torch.int32
    assert nbrs.scores.dtype == torch.float32
    assert_neighbors_exact(nbrs.indices.numpy(), nbrs.scores.numpy(), x.float().numpy(), 4)


def test_non_contiguous_input(device, rng):
    big = rng.standard_normal((8, 50, 20)).astype(np.float32)
    view = big[::2, :, ::2]  # strided in two dimensions
    assert not view.flags.c_contiguous
    nbrs = layerknn.knn(view, 5)
    assert_neighbors_exact(nbrs.indices, nbrs.scores, np.ascontiguousarray(view), 5)
    transposed = torch.from_numpy(big[0]).T  # (20, 50) as a non-contiguous tensor
    nbrs_t = layerknn.knn(transposed, 3)
    assert_neighbors_exact(nbrs_t.indices.numpy()[None], nbrs_t.scores.numpy()[None],
                           big[0].T[None].copy(), 3)


def test_neighbors_unpacks_and_reports_k(rng):
    x = rng.standard_normal((12, 3)).astype(np.float32)
    nbrs = layerknn.knn(x, 4)
    indices, scores = nbrs
    assert nbrs.k == 4 and indices is nbrs.indices and scores is nbrs.scores


def test_thread_count_does_not_change_results(rng):
    x = rng.standard_normal((3, 150, 24)).astype(np.float32)
    one = layerknn.knn(x, 7, num_threads=1)
    two = layerknn.knn(x, 7, num_threads=2)
    np.testing.assert_array_equal(one.indices, two.indices)
    np.testing.assert_array_equal(one.scores, two.scores)


def test_chance():
    assert layerknn.chance(11, 10) == 1.0
    assert layerknn.chance(2048, 10) == pytest.approx(10 / 2047)
    with pytest.raises(ValueError, match="k must be in"):
        layerknn.chance(10, 10)


# ---- bad input -------------------------------------------------------------------------------

def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\) or \(layers, n, d\), got shape \(5,\)"):
        layerknn.knn(np.ones(5, np.float32), 1)
    with pytest.raises(ValueError, match="got shape"):
        layerknn.knn(np.ones((2, 3, 4, 5), np.float32), 1)


def test_rejects_empty():
    with pytest.raises(ValueError, match="must not be empty"):
        layerknn.knn(np.ones((0, 4), np.float32), 1)
    with pytest.raises(ValueError, match="must not be empty"):
        layerknn.knn(np.ones((3, 5, 0), np.float32), 1)


@pytest.mark.parametrize("k", [0, -1, 10])
def test_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match=rf"k must be in \[1, 9\].*got {k}"):
        layerknn.knn(np.random.rand(10, 3), k)


def test_rejects_k_above_m_in_cross_form():
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        layerknn.knn(np.random.rand(10, 3), 5, y=np.random.rand(4, 3))


def test_rejects_non_integer_k():
    with pytest.raises(TypeError, match="k must be an integer"):
        layerknn.knn(np.random.rand(10, 3), 2.5)


def test_rejects_single_row_self_join():
    with pytest.raises(ValueError, match="at least 2 rows"):
        layerknn.knn(np.random.rand(1, 3), 1)


def test_rejects_mismatched_y():
    x = np.random.rand(2, 10, 3)
    with pytest.raises(ValueError, match="y must have shape"):
        layerknn.knn(x, 2, y=np.random.rand(2, 10, 4))
    with pytest.raises(ValueError, match="y must have shape"):
        layerknn.knn(x, 2, y=np.random.rand(3, 10, 3))
    with pytest.raises(ValueError, match="same number of dimensions"):
        layerknn.knn(x, 2, y=np.random.rand(10, 3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_naming_layer_and_row(bad):
    x = np.random.rand(3, 10, 4).astype(np.float32)
    x[2, 7, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf: layer 2, row 7"):
        layerknn.knn(x, 2)


def test_rejects_zero_rows_under_cosine_only():
    x = np.random.rand(2, 10, 4).astype(np.float32)
    x[1, 3] = 0
    x[1, 8] = 0
    with pytest.raises(ValueError, match=r"zero-norm rows.*\(layer 1, row 3\), \(layer 1, row 8\)"):
        layerknn.knn(x, 2)
    assert layerknn.knn(x, 2, metric="l2").indices.shape == (2, 10, 2)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_rejects_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        layerknn.knn(np.ones((5, 3), dtype=dtype), 1)


def test_rejects_unknown_metric_and_input_type():
    with pytest.raises(ValueError, match="metric must be one of"):
        layerknn.knn(np.random.rand(5, 3), 1, metric="euclid")
    with pytest.raises(TypeError, match="x must be a NumPy array"):
        layerknn.knn("not an array", 1)


def test_cuda_input_without_cuda_engine_is_a_clear_error():
    if layerknn.cuda_available():
        pytest.skip("this build has a usable CUDA engine")
    from layerknn import _backend

    class FakeCudaTensor:
        device = type("D", (), {"type": "cuda"})()

    with pytest.raises(RuntimeError, match="CUDA"):
        _backend.knn(FakeCudaTensor(), None, 1, "cosine", True)


def test_big_endian_input_is_accepted(rng):
    x = rng.standard_normal((30, 5)).astype(">f4")
    expected = layerknn.knn(x.astype(np.float32), 3).indices
    np.testing.assert_array_equal(layerknn.knn(x, 3).indices, expected)


def test_rejects_rows_too_small_to_normalise_in_float32(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    x[2] *= np.float32(1e-40)  # subnormal: its float32 norm underflows
    with pytest.raises(ValueError, match=r"near-zero-norm rows.*\(layer 0, row 2\)"):
        layerknn.knn(x, 2)


def test_rejects_float64_beyond_float32_range():
    with pytest.raises(ValueError, match="x has values beyond the float32 range"):
        layerknn.knn(np.full((4, 3), 1e39), 1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "2", 2**40, True])
def test_rejects_bad_num_threads(bad):
    x = np.random.rand(6, 3)
    with pytest.raises(ValueError, match="num_threads must be None or an integer"):
        layerknn.knn(x, 1, num_threads=bad)
    idx = layerknn.knn(x, 1).indices
    with pytest.raises(ValueError, match="num_threads must be None or an integer"):
        layerknn.overlap(idx, idx, num_threads=bad)
