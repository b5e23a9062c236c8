"""layerknn._arrays: the array boundary refuses what it cannot honour, naming the argument."""

from __future__ import annotations

import layerknn
import numpy as np
import pytest
from layerknn._arrays import to_backend_array


def test_masked_arrays_are_refused_naming_the_argument():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2, 12, 5)).astype(np.float32)
    masked = np.ma.masked_array(data, mask=np.zeros_like(data, dtype=bool))
    masked.mask[0, 3] = True
    with pytest.raises(TypeError, match=r"^x must be a plain NumPy array, got a masked array"):
        layerknn.knn(masked, 3)
    with pytest.raises(TypeError, match=r"^y must be .*masked array"):
        layerknn.knn(data, 3, y=masked)
    indices = layerknn.knn(data, 3).indices
    masked_indices = np.ma.masked_array(indices, mask=indices == 0)
    with pytest.raises(TypeError, match=r"^a must be .*masked array"):
        layerknn.overlap(masked_indices, indices)
    with pytest.raises(TypeError, match=r"^b must be .*masked array"):
        layerknn.overlap(indices, masked_indices)
    with pytest.raises(TypeError, match="acts.filled"):
        to_backend_array(masked, "acts")


def test_plain_arrays_still_pass_through_unchanged():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    array, origin = to_backend_array(data, "x")
    assert array is data and origin.kind == "numpy"
