"""layerknn.overlap with very many layers of B: scratch must not grow with Lb^2.

The CPU engine keeps, per thread, a bit set of B layers for every candidate slot; over all of
B at once that was [Lb * k slots, Lb / 64 words] (2.6 GB per thread at Lb = 100000, k = 2 for
2.4 MB of input; std::bad_alloc at k = 10). It now takes B's layers in chunks.
"""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

import layerknn


def intersection(a_row: np.ndarray, b_row: np.ndarray) -> int:
    return len(set(a_row.tolist()) & set(b_row.tolist()))


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@pytest.mark.parametrize("k", [2, 10])
def test_one_hundred_thousand_layers_of_b(k):
    rng = np.random.default_rng(k)
    La, Lb, n = 2, 100_000, 12
    a = rng.integers(0, n, (La, n, k), dtype=np.int32)  # ids < n: duplicates within rows too
    b = rng.integers(0, n, (Lb, n, k), dtype=np.int32)
    before = peak_rss_bytes()
    mean, counts = layerknn.overlap(a, b, per_prompt=True)
    grown = peak_rss_bytes() - before
    # Inputs and outputs are ~15 MB; Lb^2-sized scratch would be gigabytes.
    assert grown < 512 << 20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    assert mean.shape == (La, Lb) and counts.shape == (La, Lb, n)
    for la, lb in [(0, 0), (1, 63), (0, 64), (1, 1791), (0, 1792), (1, 50_000), (0, Lb - 1), (1, Lb - 1)]:
        expected = [intersection(a[la, i], b[lb, i]) for i in range(n)]
        assert counts[la, lb].tolist() == expected, (la, lb)
        assert mean[la, lb] == sum(expected) * (1.0 / (k * n)), (la, lb)
    np.testing.assert_array_equal(layerknn.overlap(a, b), mean)


def test_chunked_b_matches_reference_at_every_chunk_boundary():
    # k = 700 makes chunks of 64 B layers: 200 layers span four chunks, the last one partial.
    rng = np.random.default_rng(7)
    La, Lb, n, k = 3, 200, 5, 700
    a = rng.integers(0, 900, (La, n, k), dtype=np.int32)
    b = rng.integers(0, 900, (Lb, n, k), dtype=np.int32)
    mean, counts = layerknn.overlap(a, b, per_prompt=True)
    expected = np.array([[[intersection(a[la, i], b[lb, i]) for i in range(n)] for lb in range(Lb)]
                         for la in range(La)])
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(mean, expected.sum(-1) * (1.0 / (k * n)))
