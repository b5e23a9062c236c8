"""The one place that chooses between the CPU and CUDA engines of ``layerknn._core``.

Callers hand over already-validated contiguous float32 / int32 arrays: NumPy arrays for host
data, torch tensors for host or CUDA data. CUDA data goes to the CUDA kernels on the caller's
current stream; host data goes to the CPU engine. A CUDA array given to a build without CUDA
raises the "built without CUDA support" error here and nowhere else.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _core

METRIC_CODES = {"ip": 0, "cosine": 1, "l2": 2}
# Neighbourhood measures of layerknn.overlap; codes shared with csrc/cpu/overlap_measures.h.
MEASURE_CODES = {"mutual": 0, "jaccard": 1, "rank": 2, "cycle": 3, "lcs": 4, "edit": 5}

NO_CUDA_MESSAGE = (
    "layerknn was built without CUDA support; reinstall with nvcc on PATH "
    "(LAYERKNN_CUDA=ON pip install --force-reinstall layerknn) to use GPU arrays"
)


def built_with_cuda() -> bool:
    """Whether this installation of layerknn contains the CUDA engine.

    Examples
    --------
    >>> import layerknn
    >>> isinstance(layerknn.built_with_cuda(), bool)
    True
    """
    return bool(_core.built_with_cuda())


@functools.cache
def cuda_status() -> tuple[int, str]:
    """(number of usable CUDA devices, reason when there are none). Never raises."""
    count, why = _core.cuda_device_count()
    return int(count), str(why)


def cuda_available() -> bool:
    """Whether the CUDA engine is built in and at least one GPU is usable.

    Examples
    --------
    >>> import layerknn
    >>> layerknn.cuda_available() in (True, False)
    True
    """
    return built_with_cuda() and cuda_status()[0] > 0


def is_cuda(x: Any) -> bool:
    return getattr(getattr(x, "device", None), "type", None) == "cuda"


def require_cuda_engine() -> None:
    """Raise the one clear error for GPU data in a CPU-only build (or with no usable GPU)."""
    if not built_with_cuda():
        raise RuntimeError(NO_CUDA_MESSAGE)
    count, why = cuda_status()
    if count == 0:
        raise RuntimeError(f"layerknn's CUDA engine found no usable GPU: {why}")


def check_num_threads(num_threads: Any) -> int:
    """The engines' thread count for a public ``num_threads`` argument (0 = all cores)."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or not (
        1 <= num_threads <= 4096
    ):
        raise ValueError(f"num_threads must be None or an integer in [1, 4096], got {num_threads!r}")
    return int(num_threads)


_threads = check_num_threads


def _stream_of(tensor: Any) -> int:
    import torch

    return int(torch.cuda.current_stream(tensor.device).cuda_stream)


def row_sq_norms(x: Any, num_threads: int | None = None) -> np.ndarray:
    """float64 squared norm of every row of x (L, n, d) as a host (L, n) array."""
    if is_cuda(x):
        import torch

        return (
            torch.stack([(layer.double() ** 2).sum(-1) for layer in x]).cpu().numpy()
        )
    if not isinstance(x, np.ndarray):
        x = x.numpy()
    return _core.row_sq_norms(x, _threads(num_threads))


def knn(x: Any, y: Any | None, k: int, metric: str, exclude_self: bool,
        num_threads: int | None = None,
        progress: Callable[[int, int], None] | None = None) -> tuple[Any, Any]:
    """Exact k-NN of x (L, n, d) among y (L, m, d) or itself -> (indices, scores) (L, n, k).

    ``progress(done_layers, total_layers)``, if given, is called with a rising count as layers
    finish (the CPU engine reports from its own schedule; the CUDA engine once at the end).
    """
    if is_cuda(x):
        import torch

        require_cuda_engine()
        max_k = int(_core.cuda_max_k())
        if k > max_k:
            raise ValueError(f"k must be at most {max_k} on the GPU, got {k}")
        L, n, d = x.shape
        m = y.shape[1] if y is not None else n
        _core.cuda_check_knn(L, n, m, d, k, y is None, exclude_self)  # size limits, before allocating
        indices = torch.empty((L, n, k), dtype=torch.int32, device=x.device)
        scores = torch.empty((L, n, k), dtype=torch.float32, device=x.device)
        _core.knn_cuda(
            x.data_ptr(), 0 if y is None else y.data_ptr(), L, n, m, d, k,
            METRIC_CODES[metric], exclude_self, indices.data_ptr(), scores.data_ptr(),
            x.device.index or 0, _stream_of(x),
        )
        if progress is not None:
            progress(L, L)
        return indices, scores
    x_host = x if isinstance(x, np.ndarray) else x.numpy()
    y_host = None if y is None else (y if isinstance(y, np.ndarray) else y.numpy())
    return _core.knn_cpu(x_host, y_host, k, METRIC_CODES[metric], exclude_self, _threads(num_threads),
                         progress)


def host_for_measure(x: Any, measure: str) -> Any:
    """x as a host array when ``measure`` has no CUDA kernel (every measure but "mutual")."""
    if measure != "mutual" and is_cuda(x):
        return x.cpu().numpy()
    return x


def overlap(a: Any, b: Any, k: int, per_prompt: bool, num_threads: int | None = None,
            measure: str = "mutual") -> tuple[Any, Any | None]:
    """Neighbourhood measure of a (La, n, ka) and b (Lb, n, kb) -> (mean (La, Lb), per-prompt or None).

    "mutual" runs the counting engines (CPU or CUDA) and gives uint16 counts per prompt; every
    other measure runs the CPU measures engine and gives float32 scores per prompt. CUDA inputs
    with another measure are copied to the host first (see host_for_measure; there are no CUDA
    kernels for them); the results come back as host arrays, which the caller restores to the
    input's device.
    """
    if measure != "mutual":
        a_host = host_for_measure(a, measure)
        b_host = host_for_measure(b, measure)
        a_host = a_host if isinstance(a_host, np.ndarray) else a_host.numpy()
        b_host = b_host if isinstance(b_host, np.ndarray) else b_host.numpy()
        return _core.overlap_measure_cpu(a_host, b_host, k, MEASURE_CODES[measure], per_prompt,
                                         _threads(num_threads))
    if is_cuda(a):
        import torch

        require_cuda_engine()
        La, n, ka = a.shape
        Lb, _, kb = b.shape
        _core.cuda_check_overlap(La, Lb, n, ka, kb, k)
        mean = torch.empty((La, Lb), dtype=torch.float64, device=a.device)
        counts = (
            torch.empty((La, Lb, n), dtype=torch.uint16, device=a.device) if per_prompt else None
        )
        _core.overlap_cuda(
            a.data_ptr(), b.data_ptr(), La, Lb, n, ka, kb, k, mean.data_ptr(),
            0 if counts is None else counts.data_ptr(), a.device.index or 0, _stream_of(a),
        )
        return mean, counts
    a_host = a if isinstance(a, np.ndarray) else a.numpy()
    b_host = b if isinstance(b, np.ndarray) else b.numpy()
    return _core.overlap_cpu(a_host, b_host, k, per_prompt, _threads(num_threads))
