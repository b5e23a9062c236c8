"""Calibrated nulls for a comparison: what overlap do unrelated prompt pairings give?

Under the null "A's prompts do not correspond to B's", A's prompt ``i`` is paired with B's
prompt ``p(i)`` for a random permutation ``p``; B's neighbour lists are relabelled into A's
numbering (:func:`layerknn.stats.relabel_neighbors`, no new k-NN search) and the overlap is
recomputed.  One set of permutations gives every null quantity at once: per-cell mean and
spread, per-cell and family-wise (max-statistic) p-values, chance-corrected similarities and
p-values of the depth-tracking Spearman statistics.

Speed: ``P`` relabelled copies of B are stacked along the layer axis, so one call of the
overlap engine scores ``P`` permutations, ``overlap(a, stack) -> (La, P * Lb)``; ``P`` is
chosen to keep the stack under ``max_bytes``.  When A has fewer layers, A is the side copied
instead (the same per-prompt counts in another order, see ``_relabel_into``).  Permutations
are drawn in the same order as a one-at-a-time loop (``rng.permutation(n)`` per shuffle), so
results equal that loop's.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator

import numpy as np

from .stats import _block_slices, depth_alignment_stats

__all__ = ["SPEARMAN_STATS", "PermutationNull", "permutation_null", "permutation_pvalues", "transpose_null"]

#: Names of the Spearman statistics tested by :func:`permutation_null`.
SPEARMAN_STATS = ("spearman_ab", "spearman_ba", "spearman_mean", "spearman_min")

_TOL = 1e-12  # a null value within this of the observed one counts as reaching it


@dataclass(frozen=True)
class PermutationNull:
    """Everything one set of prompt permutations says about a comparison.

    Attributes
    ----------
    observed : float64 array, shape (La + 1, Lb + 1)
        The observed overlap matrix.
    null_mean, null_std : float64 arrays, shape (La + 1, Lb + 1)
        Mean and (population) standard deviation of each cell over the permutations.
    p_values : float64 array, shape (La + 1, Lb + 1)
        One-sided per-cell p-values ``(1 + #{null >= observed}) / (1 + n_perm)``.
    p_family : float
        Family-wise p-value of the largest observed cell over the family (the blocks, plus
        row/column 0 with ``include_embeddings``): ``(1 + #{perm max >= observed max}) / (1 + n_perm)``.
    p_adjusted : float64 array, shape (La + 1, Lb + 1)
        Max-statistic adjusted p-values ``(1 + #{perm max >= cell}) / (1 + n_perm)`` for the
        family's cells, NaN outside the family.  Controls the family-wise error rate.
    calibrated : float64 array, shape (La + 1, Lb + 1)
        ``(observed - null_mean) / (1 - null_mean)``: 0 at the null, 1 for identical
        neighbour sets (NaN where ``null_mean == 1``).
    max_null : float64 array, shape (n_perm,)
        Largest family cell of each permutation.
    spearman : dict
        Observed Spearman statistics (names in :data:`SPEARMAN_STATS`; NaN when undefined).
    spearman_p : dict
        Their one-sided permutation p-values (same formula as ``p_values``).
    spearman_null : dict
        Their null samples, float64 arrays of shape (n_perm,).
    n_perm, seed, k, include_embeddings
        The settings.
    """

    observed: np.ndarray
    null_mean: np.ndarray
    null_std: np.ndarray
    p_values: np.ndarray
    p_family: float
    p_adjusted: np.ndarray
    calibrated: np.ndarray
    max_null: np.ndarray
    spearman: dict = field(default_factory=dict)
    spearman_p: dict = field(default_factory=dict)
    spearman_null: dict = field(default_factory=dict)
    n_perm: int = 0
    seed: int | None = 0
    k: int = 0
    include_embeddings: bool = False

    @property
    def settings(self) -> dict:
        """``n_perm``, ``seed``, ``k``, ``include_embeddings`` and the smallest attainable p."""
        return {"n_perm": self.n_perm, "seed": self.seed, "k": self.k,
                "include_embeddings": self.include_embeddings, "min_p": 1.0 / (1 + self.n_perm)}


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_neighbors(nbrs_a, nbrs_b, k) -> tuple[np.ndarray, np.ndarray, int]:
    arrays = []
    for name, x in (("nbrs_a", nbrs_a), ("nbrs_b", nbrs_b)):
        x = np.asarray(x)
        if x.ndim != 3 or 0 in x.shape:
            raise ValueError(f"{name} must have shape (layers, n, k) with no empty axis, got {x.shape}")
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integer neighbour indices, got dtype {x.dtype}")
        arrays.append(x)
    a, b = arrays
    n = a.shape[1]
    if b.shape[1] != n:
        raise ValueError(f"nbrs_a and nbrs_b must describe the same prompts: n={n} vs n={b.shape[1]}")
    k = _check_int(k, "k", 1)
    limit = min(a.shape[2], b.shape[2])
    if k > limit:
        raise ValueError(f"k must be in [1, {limit}] (the columns of nbrs_a and nbrs_b), got {k}")
    a, b = a[..., :k], b[..., :k]
    for name, x in (("nbrs_a", a), ("nbrs_b", b)):
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= n:
            raise ValueError(f"{name} must hold prompt indices in [0, n-1] = [0, {n - 1}], "
                             f"got values in [{low}, {high}]")
    return np.ascontiguousarray(a, dtype=np.int32), np.ascontiguousarray(b, dtype=np.int32), k


def _relabel_into(out: np.ndarray, rows: np.ndarray, nbrs: np.ndarray, perms: np.ndarray, side: str) -> np.ndarray:
    """One side's neighbour lists re-paired by every row ``p`` of ``perms``, stacked into ``out[:P]``.

    ``side="b"``: ``relabel_neighbors(nbrs_b, p)`` (A's prompt i meets B's prompt p[i], seen in
    A's numbering).  ``side="a"``: ``relabel_neighbors(nbrs_a, p^-1)``, i.e. row ``p[i]`` holds
    ``p`` applied to A's row i; paired with B unchanged it gives the same per-prompt counts,
    reordered (``|p(N_a(i)) ∩ N_b(p(i))| = |N_a(i) ∩ p^-1(N_b(p(i)))|``), so the same means
    (the layerknn engine sums integer counts).  ``out`` (>= P, L, n, k) and ``rows`` (L, n, k)
    are reused int32 buffers (fresh ones cost more in page faults than the gathers).
    """
    P, n = perms.shape
    ids = np.arange(n, dtype=np.int32)
    inverse = np.empty(n, dtype=np.int32)
    for p in range(P):  # per shuffle: two cache-friendly gathers (a fused 4-D gather is ~10x slower)
        inverse[perms[p]] = ids
        row_order, value_map = (perms[p], inverse) if side == "b" else (inverse, perms[p].astype(np.int32))
        np.take(nbrs, row_order, axis=1, out=rows, mode="clip")  # ids checked in range up front: no
        np.take(value_map, rows, out=out[p], mode="clip")        # per-element bounds checks
    return out[:P].reshape(P * nbrs.shape[0], n, nbrs.shape[2])


def null_chunks(nbrs_a: np.ndarray, nbrs_b: np.ndarray, k: int, n_perm: int, seed, overlap: Callable,
                max_bytes: int) -> Iterator[np.ndarray]:
    """Null overlap matrices, ``(P, La, Lb)`` per chunk, for ``n_perm`` seeded permutations in order.

    The side with fewer layers is the one copied and relabelled (B on equal counts).
    Inputs must already be validated int32 arrays holding k columns (see :func:`permutation_null`).
    """
    La, n, _ = nbrs_a.shape
    Lb = nbrs_b.shape[0]
    side = "a" if La < Lb else "b"
    moved = nbrs_a if side == "a" else nbrs_b
    L = moved.shape[0]
    step = int(max(1, min(n_perm, max_bytes // (L * n * k * 4))))
    out = np.empty((step, L, n, k), dtype=np.int32)
    rows = np.empty((L, n, k), dtype=np.int32)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_perm:
        P = min(step, n_perm - done)
        perms = np.stack([rng.permutation(n) for _ in range(P)])
        stack = _relabel_into(out, rows, moved, perms, side)
        if side == "b":
            null = np.asarray(overlap(nbrs_a, stack, k), dtype=np.float64)
            expected = (La, P * Lb)
        else:
            null = np.asarray(overlap(stack, nbrs_b, k), dtype=np.float64)
            expected = (P * La, Lb)
        if null.shape != expected:
            raise ValueError(f"overlap must return shape (La, Lb) = {expected} for the stacked copies, "
                             f"got {null.shape}")
        yield null.reshape(La, P, Lb).transpose(1, 0, 2) if side == "b" else null.reshape(P, La, Lb)
        done += P


def _spearman_stats(matrices: np.ndarray, include_embeddings: bool) -> dict:
    """The tested statistics of a batch (..., La + 1, Lb + 1); undefined Spearman counts as 0."""
    la, lb = matrices.shape[-2] - 1, matrices.shape[-1] - 1
    s = depth_alignment_stats(matrices, la, lb, include_embeddings=include_embeddings)
    ab = np.nan_to_num(np.asarray(s["spearman_ab"], dtype=np.float64), nan=0.0)
    ba = np.nan_to_num(np.asarray(s["spearman_ba"], dtype=np.float64), nan=0.0)
    return {"spearman_ab": ab, "spearman_ba": ba, "spearman_mean": (ab + ba) / 2, "spearman_min": np.minimum(ab, ba)}


def permutation_null(nbrs_a, nbrs_b, k: int, *, n_perm: int = 1000, seed: int | None = 0,
                     overlap: Callable | None = None, observed=None, progress: Callable | None = None,
                     include_embeddings: bool = False, max_bytes: int = 16 << 20) -> PermutationNull:
    """Calibrated null of every cell and of the depth-tracking Spearman statistics.

    Parameters
    ----------
    nbrs_a, nbrs_b : int arrays, shapes (La + 1, n, >= k), (Lb + 1, n, >= k)
        Neighbour lists of both models (row 0: embeddings); La, Lb >= 1.
    k : int
        Leading columns used.
    n_perm : int
        Permutations; the smallest attainable p-value is ``1 / (1 + n_perm)``.
    seed : int or None
        Seed of ``numpy.random.default_rng``; the permutations are drawn one by one.
    overlap : callable, optional
        ``overlap(a, b, k) -> (La', Lb')`` mean overlaps, e.g. :func:`layerknn.overlap`
        (the default); it is called with a stack of relabelled copies of B.
    observed : float array, shape (La + 1, Lb + 1), optional
        The observed matrix (default: ``overlap(nbrs_a, nbrs_b, k)``).
    progress : callable, optional
        Called with the number of permutations finished after each chunk.
    include_embeddings : bool
        Whether row/column 0 belong to the family (``p_family``, ``p_adjusted``) and to the
        Spearman statistics.  Per-cell values cover the whole matrix either way.
    max_bytes : int
        Memory bound of one chunk of stacked permutations.  The default (16 MiB, ~10
        shuffles of a 19-layer model at n = 2048, k = 10) keeps the stack in a typical L3
        cache; larger chunks were slower on the 2-core AMD EPYC used for bench/RESULTS.md.

    Returns
    -------
    PermutationNull

    Notes
    -----
    The Spearman statistics are those of :func:`layerknn.stats.depth_alignment_stats`
    (best match by argmax, lowest index on ties); an undefined value (constant best matches)
    counts as 0 when compared, ``spearman_mean`` is the mean of both directions and
    ``spearman_min`` the smaller (its p-value tests "both directions track").

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> rng = np.random.default_rng(0)
    >>> acts = rng.standard_normal((6, 100, 8)).astype(np.float32)   # embeddings + 5 blocks
    >>> nb = layerknn.knn(acts, k=5).indices
    >>> res = permutation_null(nb, nb, 5, n_perm=99, overlap=layerknn.overlap)
    >>> res.p_family, res.p_values.diagonal().tolist()
    (0.01, [0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    >>> bool(np.all(res.calibrated.diagonal() == 1.0)), res.spearman_p["spearman_min"]
    (True, 0.01)
    """
    if overlap is None:
        from .overlap import overlap as overlap_impl

        overlap = overlap_impl
    if not callable(overlap):
        raise TypeError(f"overlap must be callable, got {type(overlap).__name__}")
    a, b, k = _check_neighbors(nbrs_a, nbrs_b, k)
    n_perm = _check_int(n_perm, "n_perm", 1)
    max_bytes = _check_int(max_bytes, "max_bytes", 1)
    shape = (a.shape[0], b.shape[0])
    if min(shape) < 2:
        raise ValueError(f"nbrs_a and nbrs_b need >= 2 layers each (embeddings + blocks), got {shape}")
    if observed is None:
        observed = overlap(a, b, k)
    observed = np.array(observed, dtype=np.float64)
    if observed.shape != shape:
        raise ValueError(f"observed must have shape {shape}, got {observed.shape}")
    rows, cols = _block_slices(shape[0] - 1, shape[1] - 1, include_embeddings)
    obs_spear = _spearman_stats(observed, include_embeddings)

    total = np.zeros(shape)
    total_sq = np.zeros(shape)
    exceed = np.zeros(shape, dtype=np.int64)
    maxima, spear_null = [], {name: [] for name in SPEARMAN_STATS}
    shift = observed  # moments about the observed matrix: no cancellation when the null is tight
    for chunk in null_chunks(a, b, k, n_perm, seed, overlap, max_bytes):
        dev = chunk - shift
        total += dev.sum(axis=0)
        total_sq += (dev * dev).sum(axis=0)
        exceed += (chunk >= observed - _TOL).sum(axis=0)
        maxima.append(chunk[:, rows, cols].reshape(chunk.shape[0], -1).max(axis=1))
        for name, value in _spearman_stats(chunk, include_embeddings).items():
            spear_null[name].append(value)
        if progress is not None:
            progress(chunk.shape[0])
    mean_dev = total / n_perm
    null_mean = shift + mean_dev
    null_std = np.sqrt(np.maximum(total_sq / n_perm - mean_dev * mean_dev, 0.0))
    max_null = np.concatenate(maxima)
    scale = 1.0 + n_perm
    p_family = (1 + int((max_null >= observed[rows, cols].max() - _TOL).sum())) / scale
    p_adjusted = np.full(shape, np.nan)
    sorted_max = np.sort(max_null)
    reached = n_perm - np.searchsorted(sorted_max, observed[rows, cols] - _TOL, side="left")
    p_adjusted[rows, cols] = (1 + reached) / scale
    with np.errstate(invalid="ignore", divide="ignore"):
        calibrated = np.where(null_mean < 1, (observed - null_mean) / np.where(null_mean < 1, 1 - null_mean, 1.0),
                              np.nan)
    spear_null = {name: np.concatenate(v) for name, v in spear_null.items()}
    spearman_p = {name: (1 + int((spear_null[name] >= float(obs_spear[name]) - _TOL).sum())) / scale
                  for name in SPEARMAN_STATS}
    raw = depth_alignment_stats(observed, shape[0] - 1, shape[1] - 1, include_embeddings=include_embeddings)
    spearman = {"spearman_ab": raw["spearman_ab"], "spearman_ba": raw["spearman_ba"],
                "spearman_mean": (raw["spearman_ab"] + raw["spearman_ba"]) / 2,
                "spearman_min": float(np.minimum(raw["spearman_ab"], raw["spearman_ba"]))}
    return PermutationNull(observed=observed, null_mean=null_mean, null_std=null_std,
                           p_values=(1.0 + exceed) / scale, p_family=p_family, p_adjusted=p_adjusted,
                           calibrated=calibrated, max_null=max_null, spearman=spearman, spearman_p=spearman_p,
                           spearman_null=spear_null, n_perm=n_perm, seed=seed, k=k,
                           include_embeddings=include_embeddings)


_SWAP = {"spearman_ab": "spearman_ba", "spearman_ba": "spearman_ab"}


def transpose_null(null: PermutationNull) -> PermutationNull:
    """The same null seen as (B, A): matrices transposed, A->B and B->A statistics swapped.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> nb = layerknn.knn(np.random.default_rng(0).standard_normal((3, 40, 4)).astype(np.float32), k=3).indices
    >>> null = permutation_null(nb, nb[:2], 3, n_perm=9)
    >>> transpose_null(null).p_values.shape, null.p_values.shape
    ((2, 3), (3, 2))
    """
    def swap(d: dict) -> dict:
        return {_SWAP.get(key, key): value for key, value in d.items()}

    return PermutationNull(observed=null.observed.T, null_mean=null.null_mean.T, null_std=null.null_std.T,
                           p_values=null.p_values.T, p_family=null.p_family, p_adjusted=null.p_adjusted.T,
                           calibrated=null.calibrated.T, max_null=null.max_null, spearman=swap(null.spearman),
                           spearman_p=swap(null.spearman_p), spearman_null=swap(null.spearman_null),
                           n_perm=null.n_perm, seed=null.seed, k=null.k, include_embeddings=null.include_embeddings)


def permutation_pvalues(nbrs_a: np.ndarray, nbrs_b: np.ndarray, k: int, observed: np.ndarray, *,
                        n_perm: int = 1000, seed: int | None = 0,
                        overlap: Callable | None = None,
                        progress: Callable | None = None, max_bytes: int = 16 << 20) -> np.ndarray:
    """One-sided permutation p-values of every cell against "prompts do not correspond".

    Under the null, A's prompt ``i`` is paired with B's prompt ``p(i)`` for a random
    permutation ``p``.  B's neighbour set of ``p(i)`` is relabelled into A's numbering
    (``j -> p^{-1}(j)``) and intersected with A's set of ``i``.  The p-value of a cell is
    ``(1 + #{null >= observed}) / (1 + n_perm)``.

    Parameters
    ----------
    nbrs_a, nbrs_b : int arrays, shapes (La, n, >=k), (Lb, n, >=k)
    k : int
    observed : float array, shape (La, Lb)
    n_perm : int
    overlap : callable, optional
        ``overlap(a, b, k) -> (La, Lb)`` mean overlaps; default :func:`layerknn.overlap`.
        It is called with stacks of relabelled copies of B (see
        :func:`layerknn.calibration.permutation_null`, which also gives family-wise
        p-values, the null's mean and spread, and Spearman p-values from the same shuffles).
    progress : callable, optional
        Called with the number of permutations finished after each chunk.
    max_bytes : int
        Memory bound of one chunk of stacked permutations.

    Returns
    -------
    float64 array, shape (La, Lb)

    Examples
    --------
    >>> import layerknn
    >>> nb = layerknn.knn(np.random.default_rng(0).standard_normal((2, 50, 4)).astype(np.float32), 3).indices
    >>> permutation_pvalues(nb, nb, 3, layerknn.overlap(nb, nb), n_perm=19).diagonal().tolist()
    [0.05, 0.05]
    """
    if overlap is None:
        from .overlap import overlap as overlap_impl

        overlap = overlap_impl
    nbrs_a, nbrs_b, k = _check_neighbors(nbrs_a, nbrs_b, k)
    n_perm = _check_int(n_perm, "n_perm", 1)
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape != (nbrs_a.shape[0], nbrs_b.shape[0]):
        raise ValueError(f"observed must have shape {(nbrs_a.shape[0], nbrs_b.shape[0])}, got {observed.shape}")
    exceed = np.zeros(observed.shape, dtype=np.int64)
    for chunk in null_chunks(nbrs_a, nbrs_b, k, n_perm, seed, overlap, max_bytes):
        exceed += (chunk >= observed - 1e-12).sum(axis=0)
        if progress is not None:
            progress(chunk.shape[0])
    return (1.0 + exceed) / (1.0 + n_perm)
