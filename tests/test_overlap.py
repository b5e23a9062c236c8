"""layerknn.overlap against a plain Python set-intersection reference, on every device."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import layerknn
from conftest import on_device, to_numpy


def set_reference(a, b, k):
    La, n, _ = a.shape
    Lb = b.shape[0]
    counts = np.zeros((La, Lb, n), dtype=np.int64)
    for la in range(La):
        for lb in range(Lb):
            for i in range(n):
                counts[la, lb, i] = len(set(a[la, i, :k].tolist()) & set(b[lb, i, :k].tolist()))
    return counts.mean(-1) / k, counts


def random_neighbours(rng, L, n, k, pool):
    """Distinct random indices per row drawn from a small pool, so overlaps are frequent."""
    return np.stack(
        [np.stack([rng.choice(pool, size=k, replace=False) for _ in range(n)]) for _ in range(L)]
    ).astype(np.int32)


@pytest.mark.parametrize("La,Lb,n,ka,kb,k", [(1, 1, 1, 1, 1, None), (3, 4, 17, 10, 12, None),
                                              (2, 5, 33, 16, 16, 7), (4, 2, 9, 40, 35, 35)])
def test_matches_set_intersection(device, rng, La, Lb, n, ka, kb, k):
    a = random_neighbours(rng, La, n, ka, 60)
    b = random_neighbours(rng, Lb, n, kb, 60)
    kk = k or min(ka, kb)
    mean, counts = layerknn.overlap(on_device(a, device), on_device(b, device), k, per_prompt=True)
    ref_mean, ref_counts = set_reference(a, b, kk)
    np.testing.assert_allclose(to_numpy(mean), ref_mean, rtol=1e-12)
    assert to_numpy(counts).dtype == np.uint16
    np.testing.assert_array_equal(to_numpy(counts), ref_counts)
    np.testing.assert_allclose(to_numpy(layerknn.overlap(on_device(a, device), on_device(b, device), k)), ref_mean)


def test_duplicate_indices_in_a_row_count_once(device):
    a = np.array([[[1, 1, 2]]], dtype=np.int32)
    b = np.array([[[1, 2, 2]]], dtype=np.int32)
    _, counts = layerknn.overlap(on_device(a, device), on_device(b, device), per_prompt=True)
    assert to_numpy(counts).tolist() == [[[2]]]


def test_uses_leading_columns_only(device):
    a = np.array([[[5, 6, 7, 8]]], dtype=np.int32)
    b = np.array([[[6, 9, 5, 8]]], dtype=np.int32)
    assert to_numpy(layerknn.overlap(on_device(a, device), on_device(b, device), 2)).item() == 0.5
    assert to_numpy(layerknn.overlap(on_device(a, device), on_device(b, device), 3)).item() == pytest.approx(2 / 3)


def test_accepts_neighbors_and_2d_inputs(rng):
    x = rng.standard_normal((3, 25, 6)).astype(np.float32)
    nbrs = layerknn.knn(x, 4)
    full = layerknn.overlap(nbrs, nbrs)
    assert full.shape == (3, 3) and np.allclose(full.diagonal(), 1.0)
    assert layerknn.overlap(nbrs.indices[1], nbrs).shape == (3,)
    assert np.ndim(layerknn.overlap(nbrs.indices[1], nbrs.indices[1])) == 0


def test_torch_in_torch_out(rng):
    a = torch.from_numpy(random_neighbours(rng, 2, 10, 4, 20)).long()
    mean, counts = layerknn.overlap(a, a, per_prompt=True)
    assert isinstance(mean, torch.Tensor) and mean.dtype == torch.float64
    assert isinstance(counts, torch.Tensor)
    assert torch.allclose(mean.diagonal(), torch.ones(2, dtype=torch.float64))


def test_identical_vs_independent_neighbours(rng):
    n, k = 400, 10
    a = np.stack([np.stack([rng.choice(n, k, replace=False) for _ in range(n)]) for _ in range(3)]).astype(np.int32)
    b = np.stack([np.stack([rng.choice(n, k, replace=False) for _ in range(n)]) for _ in range(3)]).astype(np.int32)
    cross = layerknn.overlap(a, b)
    assert np.abs(cross - k / n).max() < 0.02  # independent sets share ~k^2/n elements
    assert np.allclose(layerknn.overlap(a, a).diagonal(), 1.0)


def test_rejects_bad_input():
    a = np.zeros((2, 5, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="same prompts: a has n=5, b has n=6"):
        layerknn.overlap(a, np.zeros((2, 6, 3), dtype=np.int32))
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        layerknn.overlap(a, a, 4)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        layerknn.overlap(a, a, 0)
    with pytest.raises(TypeError, match="integer dtype"):
        layerknn.overlap(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="must be >= 0"):
        layerknn.overlap(a - 1, a)
    with pytest.raises(ValueError, match="got shape"):
        layerknn.overlap(np.zeros(3, dtype=np.int32), a)
    with pytest.raises(ValueError, match="must not be empty"):
        layerknn.overlap(np.zeros((2, 0, 3), dtype=np.int32), a)


def test_big_endian_and_unsigned_indices():
    a = np.array([[1, 2], [0, 2], [0, 1]])
    expected = layerknn.overlap(a, a[:, ::-1])
    assert layerknn.overlap(a.astype(">i4"), a[:, ::-1]) == expected
    t = torch.from_numpy(a)
    assert float(layerknn.overlap(t.to(torch.uint16), t.flip(1).to(torch.uint8))) == float(expected)


def test_two_dimensional_torch_inputs_give_a_zero_dim_tensor():
    t = torch.tensor([[1, 2], [0, 2], [0, 1]])
    mean, counts = layerknn.overlap(t, t, per_prompt=True)
    assert mean.shape == () and counts.shape == (3,)


def test_huge_ids_are_relabelled_not_tabulated(rng):
    a = random_neighbours(rng, 2, 30, 4, 60)
    b = random_neighbours(rng, 3, 30, 4, 60)
    shift = 2_000_000_000  # a direct id table this large would need gigabytes
    ref_mean, ref_counts = set_reference(a, b, 4)
    mean, counts = layerknn.overlap(a + shift, b + shift, per_prompt=True)
    np.testing.assert_allclose(mean, ref_mean)
    np.testing.assert_array_equal(counts, ref_counts)
