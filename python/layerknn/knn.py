"""Exact k-nearest neighbours of every prompt at every layer: ``layerknn.knn``.

The public entry point validates its inputs once (shapes, dtypes, k, NaN/Inf, zero norms),
normalises them to contiguous float32 on their own device, runs the CPU or CUDA engine through
:mod:`layerknn._backend`, and returns a :class:`Neighbors` in the caller's array type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import _backend, _duplicates, _scaling
from ._arrays import as_float32, restore, to_backend_array

METRICS = ("cosine", "ip", "l2")


@dataclasses.dataclass(frozen=True)
class Neighbors:
    """The k nearest neighbours of every row, best first.

    Attributes
    ----------
    indices : array of int32, shape (L, n, k) or (n, k)
        Row indices of the neighbours (into ``y`` when it was given, else into ``x``).
    scores : array of float32, same shape
        Cosine similarity, inner product, or squared L2 distance (ascending) of each neighbour.
    metric : str
        The metric that produced the scores.
    """

    indices: Any
    scores: Any
    metric: str = "cosine"

    @property
    def k(self) -> int:
        """Number of neighbours per row."""
        return int(self.indices.shape[-1])

    def __iter__(self):
        """Unpack as ``indices, scores = layerknn.knn(x)``."""
        return iter((self.indices, self.scores))


def _check_k(k: Any, limit: int, why: str) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in [1, {limit}] ({why}), got {k}")
    return k


def _check_finite_and_norms(x: Any, name: str, metric: str, num_threads: int | None) -> np.ndarray:
    """float64 squared row norms (L, n); ValueError naming the layer and rows holding NaN/Inf, or
    zero rows under cosine."""
    sq_norms = _backend.row_sq_norms(x, num_threads)
    bad = ~np.isfinite(sq_norms)
    if bad.any():
        layer, row = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} contains NaN or Inf: layer {layer}, row {row} "
            f"({int(bad.sum())} bad row(s) in total)"
        )
    if metric == "cosine":
        # Rows are normalised in float32: a norm below ~1e-15 underflows there (squares < 1e-30).
        tiny = sq_norms < 1e-30
        if tiny.any():
            where = np.argwhere(tiny)
            shown = ", ".join(f"(layer {layer}, row {row})" for layer, row in where[:5])
            more = f" and {len(where) - 5} more" if len(where) > 5 else ""
            what = "zero-norm rows" if (sq_norms[tiny] == 0).all() else "zero or near-zero-norm rows (norm < 1e-15)"
            raise ValueError(
                f"{name} has {what}, which have no cosine similarity in float32: {shown}{more}"
            )
    return sq_norms


def _as_layers(x: Any, name: str) -> tuple[Any, bool]:
    """(L, n, d) view of x plus whether the caller passed a single (n, d) layer."""
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (n, d) or (layers, n, d), got shape {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return (x[None] if x.ndim == 2 else x), x.ndim == 2


def _check_progress(progress: Any) -> None:
    if not (isinstance(progress, bool) or progress is None or callable(progress)):
        raise TypeError(f"progress must be True, False or a callable(done, total), got {type(progress).__name__}")


@contextlib.contextmanager
def _layer_progress(progress: Any, total: int) -> Iterator[Callable[[int, int], None] | None]:
    """The engine's ``progress(done, total)`` callback for knn's ``progress`` argument."""
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="layer", leave=False)
        try:
            yield lambda done, _total: bar.update(done - bar.n)
        finally:
            bar.close()
    else:
        yield progress if callable(progress) else None


def knn(x: Any, k: int = 10, *, metric: str = "cosine", exclude_self: bool = True,
        y: Any | None = None, num_threads: int | None = None, progress: Any = False) -> Neighbors:
    """Exact k nearest neighbours of every row of ``x``, layer by layer.

    Parameters
    ----------
    x : array, shape (n, d) or (L, n, d)
        NumPy array, torch tensor (CPU or CUDA) or DLPack-capable array of float16, bfloat16,
        float32 or float64, any strides. A 3-D input is a stack of L layers searched
        independently.
    k : int, default 10
        Neighbours per row: ``1 <= k <= n - 1`` for the self-join with ``exclude_self``,
        ``k <= m`` with ``y``.
    metric : {"cosine", "ip", "l2"}
        Cosine similarity (rows L2-normalised in float32), inner product, or squared Euclidean
        distance (scores ascending). Inner product and L2 accept rows of any float32 magnitude
        (layers are rescaled by an exact power of two where float32 arithmetic needs it); scores
        beyond float32's range raise ValueError.
    exclude_self : bool, default True
        In the self-join, drop ``j == i`` by index (duplicated rows still find each other).
    y : array, shape (m, d) or (L, m, d), optional
        Search ``x``'s rows among ``y``'s rows instead (no self exclusion).
    num_threads : int, optional
        CPU threads (default: all cores). Ignored on the GPU.
    progress : bool or callable, default False
        True shows a progress bar over layers (tqdm); a callable is called as
        ``progress(done_layers, total_layers)`` with a rising count as layers finish, ending
        with ``(L, L)`` (the GPU reports once, at the end).

    Returns
    -------
    Neighbors
        ``indices`` (int32) and ``scores`` (float32) of shape (L, n, k), or (n, k) for 2-D
        input, best first; equal scores rank the lower index first. Same array type and device
        as ``x``.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> nbrs = layerknn.knn(x, k=1)
    >>> nbrs.indices[:, 0].tolist()
    [1, 0, 3, 2]
    >>> layerknn.knn(np.stack([x, x[::-1]]), k=2).indices.shape
    (2, 4, 2)
    >>> seen = []
    >>> _ = layerknn.knn(np.stack([x, x, x]), k=1, progress=lambda done, total: seen.append((done, total)))
    >>> seen[-1]
    (3, 3)
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    _backend.check_num_threads(num_threads)
    _check_progress(progress)
    x_arr, origin = to_backend_array(x, "x")
    x_layers, single = _as_layers(x_arr, "x")
    x32 = as_float32(x_layers, "x")
    L, n, d = x32.shape
    y32 = None
    if y is not None:
        y_arr, y_origin = to_backend_array(y, "y")
        if y_origin.device != origin.device:
            raise ValueError(f"x and y must be on the same device, got {origin.device} and {y_origin.device}")
        if y_arr.ndim != x_arr.ndim:
            raise ValueError(
                f"y must have the same number of dimensions as x ({x_arr.ndim}), got shape {tuple(y_arr.shape)}"
            )
        y_layers, _ = _as_layers(y_arr, "y")
        if y_layers.shape[0] != L or y_layers.shape[2] != d:
            raise ValueError(
                f"y must have shape ({'' if single else f'{L}, '}m, {d}) to match x, got {tuple(y_arr.shape)}"
            )
        y32 = as_float32(y_layers, "y")
        k = _check_k(k, y32.shape[1], "m, the number of rows of y")
    elif exclude_self:
        if n < 2:
            raise ValueError(f"x must have at least 2 rows to find neighbours other than self, got n={n}")
        k = _check_k(k, n - 1, "n - 1: each row excludes itself")
    else:
        k = _check_k(k, n, "n, the number of rows")
    # The CPU engine validates rows in its own first pass over them (no extra pass here); the
    # GPU path checks up front. Layers too large or too small for float32 arithmetic are
    # rescaled by a power of two (see _scaling).
    on_cpu = not _backend.is_cuda(x32)

    def norms():
        return (_check_finite_and_norms(x32, "x", metric, num_threads),
                None if y32 is None else _check_finite_and_norms(y32, "y", metric, num_threads))

    try:
        with _layer_progress(progress, L) as report:
            def search(xs, k_, exclude_self_, progress_, ys=None):
                return _backend.knn(xs, ys, k_, metric, exclude_self_, num_threads, progress_)

            def run(xs, ys):
                if ys is None and on_cpu:  # layers of repeated rows: searched by distinct rows
                    host = xs if isinstance(xs, np.ndarray) else xs.numpy()
                    return _duplicates.search_self(search, host, k, bool(exclude_self), metric != "l2", report)
                return search(xs, k, bool(exclude_self), report, ys)

            indices, scores = _scaling.safe_knn(run, x32, y32, metric, norms, None if on_cpu else norms())
    except ValueError:
        if on_cpu:  # the engine met a bad row: report all of them, as the GPU path does
            norms()
        raise
    if single:
        indices, scores = indices[0], scores[0]
    return Neighbors(restore(indices, origin), restore(scores, origin), metric)


def chance(n: int, k: int) -> float:
    """Expected overlap fraction of two independent random k-neighbour sets: ``k / (n - 1)``.

    Examples
    --------
    >>> import layerknn
    >>> layerknn.chance(2048, 10)
    0.004885197850512946
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    _check_k(k, n - 1, "n - 1")
    return k / (n - 1)
