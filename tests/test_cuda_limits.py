"""The CUDA engine's size limits (csrc/cuda/limits.h), checked on the host in every build.

The Python layer calls ``_core.cuda_check_knn`` / ``_core.cuda_check_overlap`` before it allocates
outputs on the device, so a problem the kernels cannot index (32-bit rows and features, grid
limits) is a ValueError naming the bound and the value, never a launch failure or a wrong answer.
These run without a GPU; the same checks inside the CUDA drivers are exercised by the CPU
emulation test.
"""

from __future__ import annotations

import re

import pytest

from layerknn import _core

MAX_EXTENT = 2**31 - 1 - 256


@pytest.mark.parametrize("L,n,m,d,k,self_join", [
    (1, 2, 2, 1, 1, True),
    (3, 300, 300, 64, 256, False),
    (10**6, 1000, 1000, 4096, 10, True),      # many layers: the driver chunks them
    (2, MAX_EXTENT, MAX_EXTENT, 8, 10, False),
    (1, 5, 5, MAX_EXTENT, 4, True),
    (0, 0, 0, 0, 10, True),                   # empty problems are fine
])
def test_problems_within_the_limits_pass(L, n, m, d, k, self_join):
    assert _core.cuda_check_knn(L, n, m, d, k, self_join, True) is None


@pytest.mark.parametrize("kwargs,message", [
    ({"n": MAX_EXTENT + 1}, f"n (query rows) must be at most {MAX_EXTENT} for the CUDA engine "
                            f"(32-bit row and feature indices), got {MAX_EXTENT + 1}; use the CPU engine"),
    ({"m": 2**32, "self_join": False}, f"m (database rows) must be at most {MAX_EXTENT} for the CUDA "
                                       f"engine (32-bit row and feature indices), got {2**32}"),
    ({"d": 2**31}, f"d (features) must be at most {MAX_EXTENT} for the CUDA engine (32-bit row and "
                   f"feature indices), got {2**31}"),
    ({"k": 257}, "k must be at most 256 on the GPU (largest CUDA k bucket), got 257; use the CPU engine"),
    ({"k": 100}, "k must be in [1, 99], got 100"),
    ({"k": 0}, "k must be in [1, 99], got 0"),
    ({"n": -1}, "shapes must be non-negative, got L=2, n=-1"),
])
def test_problems_beyond_the_limits_name_the_bound(kwargs, message):
    args = {"L": 2, "n": 100, "m": 100, "d": 16, "k": 5, "self_join": True, "exclude_self": True}
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        _core.cuda_check_knn(**args)


def test_cross_form_k_may_reach_m():
    assert _core.cuda_check_knn(1, 10, 7, 4, 7, False, True) is None
    with pytest.raises(ValueError, match=r"\[1, 7\], got 8"):
        _core.cuda_check_knn(1, 10, 7, 4, 8, False, True)


def test_overlap_limits():
    assert _core.cuda_check_overlap(3, 1000, 2048, 10, 12, 10) is None
    with pytest.raises(ValueError, match=r"k must be in \[1, min\(ka, kb, 65535\)\] = \[1, 5\], got 6"):
        _core.cuda_check_overlap(1, 1, 10, 5, 7, 6)
    with pytest.raises(ValueError, match="65535"):
        _core.cuda_check_overlap(1, 1, 10, 70000, 70000, 65536)
    with pytest.raises(ValueError, match="n \\(prompts\\) must be at most 549755813632"):
        _core.cuda_check_overlap(1, 1, 2**40, 5, 5, 5)
    with pytest.raises(ValueError, match="shapes must be non-negative"):
        _core.cuda_check_overlap(-1, 1, 10, 5, 5, 5)
