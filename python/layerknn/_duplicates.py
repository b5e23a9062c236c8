"""Layers whose rows repeat exactly, searched once per distinct row.

Last-token pooling gives the embedding layer one row per distinct final token: 1753 of the main
job's 2048 prompts end in the same token. Each of those rows has 1752 exact ties, more than the
engine's candidate lists hold, so each would fall back to an exact scan of the whole layer
(about a third of a 31-layer search). Identical rows (the same bits) have the same exact score
against every row, so one search among the distinct rows answers them all:

* search each distinct row's ``k + 1`` best distinct rows (itself included), ordered by the one
  tie rule (score, then lower index; distinct rows are numbered by their first member, so their
  order is their members' order);
* expand each into its members with the same score and order them by the same rule. The first
  ``k + 1`` of the expansion are the ``k + 1`` best rows of the layer: above the last score
  taken every row is there, and at that score, with ``t`` places left, the ``t`` lowest indices
  belong to the ``t`` distinct rows of lowest first member, which the search kept;
* each member drops itself (when self is excluded) and keeps ``k``.

The results are bit-identical to the plain search (``tests/test_duplicates.py``). Only layers with
a group of at least :data:`MIN_GROUP` identical rows take this path; below that the engine's
lists absorb the ties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_GROUP = 32  # identical rows from which a layer is searched by its distinct rows

# search(x (L, n, d), k, exclude_self, progress) -> (indices, scores) (L, n, k), one engine call.
Search = Callable[[np.ndarray, int, bool, Callable[[int, int], None] | None], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class RowGroups:
    """The distinct rows of one layer (n rows)."""

    first: np.ndarray    # (u,) each distinct row's first (lowest) index, ascending
    group: np.ndarray    # (n,) the distinct row of each row
    members: np.ndarray  # (n,) rows ordered by group, ascending within each
    starts: np.ndarray   # (u + 1,) group g's members are members[starts[g]:starts[g + 1]]

    def of(self, g: int) -> np.ndarray:
        return self.members[self.starts[g]:self.starts[g + 1]]

    def size(self, g: np.ndarray) -> np.ndarray:
        return self.starts[g + 1] - self.starts[g]


def repeated_rows(layer: np.ndarray) -> RowGroups | None:
    """The groups of identical rows of ``layer`` (n, d) float32, or None when no group reaches
    :data:`MIN_GROUP` (the usual case, decided from two features' bits alone)."""
    n, d = layer.shape
    bits = layer.view(np.uint32)
    probe = bits[:, 0].astype(np.uint64) << np.uint64(32)
    if d > 1:
        probe |= bits[:, 1]
    if np.unique(probe, return_counts=True)[1].max() < MIN_GROUP:
        return None  # identical rows share these two features: no group large enough
    rows = np.ascontiguousarray(bits).view(np.dtype((np.void, 4 * d))).ravel()
    _, first, inverse, counts = np.unique(rows, return_index=True, return_inverse=True, return_counts=True)
    if counts.max() < MIN_GROUP:
        return None
    order = np.argsort(first)  # number the groups by their first member
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[inverse.ravel()]
    members = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts[order])])
    return RowGroups(first[order], group, members, starts)


def _expand(groups: RowGroups, ids: np.ndarray, scores: np.ndarray, k: int, exclude_self: bool,
            larger_is_better: bool, out_ids: np.ndarray, out_scores: np.ndarray) -> None:
    """Each row's k best from its group's best distinct rows (ids, scores: (u, k_u))."""
    u = len(groups.first)
    singles = (groups.size(ids) == 1).all(axis=1) & (groups.size(np.arange(u)) == 1)
    if singles.any():  # every row involved is alone: the search's order is the rows' order
        row = groups.first[singles]
        rows = groups.first[ids[singles]]
        keep = rows != row[:, None] if exclude_self else np.ones(rows.shape, bool)
        first_kept = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in order
        out_ids[row] = np.take_along_axis(rows, first_kept, axis=1)
        out_scores[row] = np.take_along_axis(scores[singles], first_kept, axis=1)
    for g in np.flatnonzero(~singles):
        expanded = np.concatenate([groups.of(c) for c in ids[g]])
        values = np.repeat(scores[g], groups.size(ids[g]))
        key = -values if larger_is_better else values
        best = np.lexsort((expanded, key))[: k + 1]  # by score, then lower index
        expanded, values = expanded[best], values[best]
        for row in groups.of(g):
            keep = expanded != row if exclude_self else np.ones(len(expanded), bool)
            out_ids[row] = expanded[keep][:k]
            out_scores[row] = values[keep][:k]


def search_self(search: Search, x: np.ndarray, k: int, exclude_self: bool, larger_is_better: bool,
                progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """The self-join k-NN of x (L, n, d), layers with large groups of identical rows searched by
    their distinct rows; bit-identical to ``search(x, k, exclude_self, progress)``."""
    L, n, _ = x.shape
    repeated = {layer: g for layer in range(L) if (g := repeated_rows(x[layer])) is not None}
    if not repeated:
        return search(x, k, exclude_self, progress)
    indices = np.empty((L, n, k), dtype=np.int32)
    scores = np.empty((L, n, k), dtype=np.float32)
    plain = [layer for layer in range(L) if layer not in repeated]
    if plain:
        def plain_progress(done: int, total: int) -> None:
            progress(done, L)

        # A run of consecutive layers (the usual case: the embedding layer is the repeated one)
        # is a view; otherwise the plain layers are gathered.
        run = slice(plain[0], plain[-1] + 1) if plain[-1] - plain[0] == len(plain) - 1 else plain
        indices[run], scores[run] = search(np.ascontiguousarray(x[run]), k, exclude_self,
                                           plain_progress if progress else None)
    for done, (layer, groups) in enumerate(repeated.items(), start=len(plain) + 1):
        distinct = np.ascontiguousarray(x[layer][groups.first][None])
        k_distinct = min(k + 1, len(groups.first))
        ids, values = search(distinct, k_distinct, False, None)
        _expand(groups, ids[0], values[0], k, exclude_self, larger_is_better, indices[layer], scores[layer])
        if progress:
            progress(done, L)
    return indices, scores
