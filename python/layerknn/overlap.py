"""Neighbour-set overlap between every pair of layers: ``layerknn.overlap``.

Given the k nearest neighbours of the same n prompts at La layers of one model and Lb layers of
another, the overlap of a layer pair is the mean over prompts of |N_a(i) ∩ N_b(i)| / k — the
similarity measure of "Layers at Similar Depths Generate Similar Activations Across LLM
Architectures". Only the first k columns of each row are used, so one k_max search serves any
smaller k.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _backend
from ._arrays import as_int32, restore, to_backend_array
from .knn import Neighbors


def _indices_of(x: Any, name: str) -> tuple[Any, Any, bool]:
    raw = x.indices if isinstance(x, Neighbors) else x
    arr, origin = to_backend_array(raw, name)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (n, k) or (layers, n, k), got shape {tuple(arr.shape)}")
    if any(s == 0 for s in arr.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    single = arr.ndim == 2
    return as_int32(arr[None] if single else arr, name), origin, single


def _compact_ids(a: Any, b: Any, k: int) -> tuple[Any, Any]:
    """Relabel neighbour ids densely when they are far larger than the prompt count.

    The CPU engine indexes a table by id, so ids from a huge database (or arbitrary labels) are
    first mapped to 0..u-1 over the ids actually used; intersections are unchanged.
    """
    n = a.shape[1]
    if max(int(a.max()), int(b.max())) < 64 * n + 4096 or _backend.is_cuda(a):
        return a, b
    used_a = np.asarray(a)[..., :k]
    used_b = np.asarray(b)[..., :k]
    _, inverse = np.unique(np.concatenate([used_a.ravel(), used_b.ravel()]), return_inverse=True)
    inverse = inverse.astype(np.int32)
    return (inverse[: used_a.size].reshape(used_a.shape).copy(),
            inverse[used_a.size:].reshape(used_b.shape).copy())


def overlap(a: Any, b: Any, k: int | None = None, *, per_prompt: bool = False,
            num_threads: int | None = None) -> Any:
    """Mean fraction of shared neighbours for every pair of layers.

    Parameters
    ----------
    a : Neighbors or int array, shape (La, n, ka) or (n, ka)
        Neighbour indices of model A's layers (e.g. ``layerknn.knn(acts_a).indices``).
    b : Neighbors or int array, shape (Lb, n, kb) or (n, kb)
        Neighbour indices of model B's layers, for the same n prompts in the same order.
    k : int, optional
        Leading columns used from each row; default ``min(ka, kb)``.
    per_prompt : bool, default False
        Also return the per-prompt intersection sizes, for bootstrap / permutation statistics.
    num_threads : int, optional
        CPU threads (default: all cores).

    Returns
    -------
    mean : float64 array, shape (La, Lb)
        Mean over prompts of ``|A_i ∩ B_i| / k``. Dimensions of 2-D inputs are dropped.
    counts : uint16 array, shape (La, Lb, n)
        Only with ``per_prompt=True``: the intersection sizes.

    A row's duplicate indices count once. Results come back as the array type of ``a``.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> a = np.array([[[1, 2], [0, 2], [0, 1]]])
    >>> b = np.array([[[2, 1], [2, 3], [3, 0]], [[3, 3], [3, 3], [3, 3]]])
    >>> layerknn.overlap(a, b).tolist()
    [[0.6666666666666666, 0.0]]
    >>> mean, counts = layerknn.overlap(a, b, per_prompt=True)
    >>> counts[0, 0].tolist()
    [2, 1, 1]
    """
    a32, origin, a_single = _indices_of(a, "a")
    b32, b_origin, b_single = _indices_of(b, "b")
    if origin.device != b_origin.device:
        raise ValueError(f"a and b must be on the same device, got {origin.device} and {b_origin.device}")
    if a32.shape[1] != b32.shape[1]:
        raise ValueError(
            f"a and b must describe the same prompts: a has n={a32.shape[1]}, b has n={b32.shape[1]}"
        )
    limit = min(a32.shape[2], b32.shape[2])
    if k is None:
        k = limit
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer or None, got {type(k).__name__}")
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in [1, {limit}] (the columns of a and b), got {k}")
    _backend.check_num_threads(num_threads)
    a32, b32 = _compact_ids(a32, b32, int(k))
    mean, counts = _backend.overlap(a32, b32, int(k), bool(per_prompt), num_threads)
    index = (0 if a_single else slice(None), 0 if b_single else slice(None))
    mean = restore(mean[index], origin)
    if not per_prompt:
        return mean
    return mean, restore(counts[index], origin)
