"""Neighbourhood similarity between every pair of layers: ``layerknn.overlap``.

Given the k nearest neighbours of the same n prompts at La layers of one model and Lb layers of
another, the overlap of a layer pair is the mean over prompts of |N_a(i) ∩ N_b(i)| / k — the
similarity measure of "Layers at Similar Depths Generate Similar Activations Across LLM
Architectures". ``measure=`` swaps in other per-prompt scores of the two neighbour rows (Jaccard,
rank-aware overlap, and the cycle / LCS / edit-distance k-NN measures of platonic-rep), all
computed by the same batched engine. Only the first k columns of each row are used, so one k_max
search serves any smaller k.
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


def _compact_ids(a: Any, b: Any, k: int, spread: int = 64) -> tuple[Any, Any]:
    """Relabel neighbour ids densely when they are far larger than the prompt count.

    The CPU engines index a table by id, so ids from a huge database (or arbitrary labels) are
    first mapped to 0..u-1 over the ids actually used; every measure except cycle (whose ids are
    prompt indices) is unchanged by the relabelling.
    """
    n = a.shape[1]
    if max(int(a.max()), int(b.max())) < spread * n + 4096 or _backend.is_cuda(a):
        return a, b
    used_a = np.asarray(a)[..., :k]
    used_b = np.asarray(b)[..., :k]
    _, inverse = np.unique(np.concatenate([used_a.ravel(), used_b.ravel()]), return_inverse=True)
    inverse = inverse.astype(np.int32)
    return (inverse[: used_a.size].reshape(used_a.shape).copy(),
            inverse[used_a.size:].reshape(used_b.shape).copy())


MEASURES = tuple(_backend.MEASURE_CODES)
"""Names accepted by ``overlap(measure=...)``; the first is the default."""


def _check_measure(measure: Any) -> str:
    if isinstance(measure, str) and measure in _backend.MEASURE_CODES:
        return measure
    allowed = ", ".join(repr(m) for m in MEASURES)
    if not isinstance(measure, str):
        raise TypeError(f"measure must be a string, one of {allowed}; got {type(measure).__name__}")
    raise ValueError(f"measure must be one of {allowed}; got {measure!r}")


def _check_prompt_ids(x: Any, k: int, name: str) -> None:
    """Cycle follows neighbour ids as prompt indices: every used id must lie in [0, n)."""
    n = x.shape[1]
    high = int(x[..., :k].max())
    if high >= n:
        raise ValueError(
            f"measure='cycle' follows neighbour ids as prompt indices, so {name} must hold ids in "
            f"[0, n) = [0, {n - 1}] (neighbours of the prompts among themselves); got id {high}"
        )


def overlap(a: Any, b: Any, k: int | None = None, *, measure: str = "mutual",
            per_prompt: bool = False, num_threads: int | None = None) -> Any:
    """Mean neighbourhood similarity (by default the fraction of shared neighbours) of every layer pair.

    Parameters
    ----------
    a : Neighbors or int array, shape (La, n, ka) or (n, ka)
        Neighbour indices of model A's layers (e.g. ``layerknn.knn(acts_a).indices``).
    b : Neighbors or int array, shape (Lb, n, kb) or (n, kb)
        Neighbour indices of model B's layers, for the same n prompts in the same order.
    k : int, optional
        Leading columns used from each row; default ``min(ka, kb)``.
    measure : {"mutual", "jaccard", "rank", "cycle", "lcs", "edit"}, default "mutual"
        How prompt i's two rows A = N_a(i) and B = N_b(i) (first k ids, best first) are scored.
        Every score lies in [0, 1], 1 for identical duplicate-free rows (but see "cycle"):

        - ``"mutual"``: |A ∩ B| / k, the shared fraction (platonic-rep's ``mutual_knn``).
        - ``"jaccard"``: |A ∩ B| / |A ∪ B| of the id sets, c / (2k − c) for c shared ids.
        - ``"rank"``: average overlap over depths, (1/k) Σ_{d=1..k} |A_d ∩ B_d| / d with A_d
          the first d ids, so agreeing on the nearest neighbours counts most. Its d = k term alone
          is the mutual overlap (order ignored); rows sharing all ids in another order score < 1.
        - ``"cycle"``: 1 when i is among the a-neighbours of at least one of its b-neighbours
          (i ∈ N_a(j) for some j ∈ B), else 0 — platonic-rep's ``cycle_knn`` (``knn_A[knn_B]``),
          already a 0/1 score. It reads the rows of all prompts, so ids must be prompt indices
          in [0, n) (the self-join ``knn(x)``); it is not symmetric in a and b, and identical
          lists score 1 only for prompts with a reciprocal neighbour.
        - ``"lcs"``: length of the longest common subsequence of the two rows, divided by k
          (platonic-rep's ``lcs_knn`` reports the raw length).
        - ``"edit"``: 1 − (Levenshtein distance of the two rows) / k, platonic-rep's
          ``edit_distance_knn`` taken per prompt (the mean is the same).

        Repeated ids in a row count once for mutual, jaccard and rank (rows as sets, an id at
        its first column) and as they stand for lcs and edit (rows as sequences). Only "mutual"
        runs on the GPU; CUDA inputs with another measure are copied to the host, scored by
        the CPU engine, and the results come back on the input's device.
    per_prompt : bool, default False
        Also return per-prompt values, for bootstrap / permutation statistics: the uint16
        intersection sizes for "mutual", the float32 scores for every other measure.
    num_threads : int, optional
        CPU threads (default: all cores). Results do not depend on it.

    Returns
    -------
    mean : float64 array, shape (La, Lb)
        Mean over prompts of the score (for "mutual", ``|A_i ∩ B_i| / k``). Dimensions of 2-D
        inputs are dropped.
    per_prompt : array, shape (La, Lb, n)
        Only with ``per_prompt=True``: uint16 intersection sizes ("mutual") or float32 scores
        (the float32 roundings of the float64 values that ``mean`` averages).

    Results come back as the array type of ``a``. Cost per layer pair and prompt: O(k) for every
    measure (bit-parallel LCS and edit distance for k <= 64), O(k²) for lcs and edit beyond.

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
    >>> x, y = np.array([[1, 2, 3]]), np.array([[3, 2, 1]])   # one prompt, same ids reversed
    >>> [round(float(layerknn.overlap(x, y, measure=m)), 4) for m in ("mutual", "jaccard", "rank", "lcs", "edit")]
    [1.0, 1.0, 0.5, 0.3333, 0.3333]
    >>> chain = np.array([[1], [2], [0]])     # prompt i's one neighbour is i + 1: nobody points back
    >>> float(layerknn.overlap(chain, chain, measure="cycle")), float(layerknn.overlap(chain, chain))
    (0.0, 1.0)
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
    measure = _check_measure(measure)
    _backend.check_num_threads(num_threads)
    a32, b32 = _backend.host_for_measure(a32, measure), _backend.host_for_measure(b32, measure)
    if measure == "cycle":
        _check_prompt_ids(a32, int(k), "a")
        _check_prompt_ids(b32, int(k), "b")
    else:  # the CPU engines tabulate ids (16 bytes each per thread for the measures engine)
        a32, b32 = _compact_ids(a32, b32, int(k), 64 if measure == "mutual" else 4)
    mean, counts = _backend.overlap(a32, b32, int(k), bool(per_prompt), num_threads, measure)
    index = (0 if a_single else slice(None), 0 if b_single else slice(None))
    mean = restore(mean[index], origin)
    if not per_prompt:
        return mean
    return mean, restore(counts[index], origin)
