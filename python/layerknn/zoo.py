"""Many models at once: ``layerknn.zoo`` and the ``Zoo`` result.

Each model's neighbour lists are computed once (and cached on disk, keyed by the
extraction fingerprint), then one ``layerknn.overlap`` call on the layer-concatenated
neighbour arrays gives the block matrix over all layers of all models (the "mega
matrix").  Every model pair becomes a :class:`~layerknn.compare.Comparison` sliced from
it, and the unit-square summary bins the similarity of all pairs by normalised depth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .compare import (Comparison, ModelNeighbors, _as_cache, _check_k, _jsonable, comparison_from_neighbors,
                      model_neighbors, resolve_texts)
from .knn import Neighbors
from .overlap import overlap

__all__ = ["Zoo", "zoo", "depth_binned_similarity"]


def depth_binned_similarity(pairs: Sequence[Comparison], bins: int = 20, *,
                            include_embeddings: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean similarity binned over (depth in model 1, depth in model 2), over both orders of each pair.

    Returns
    -------
    grid : float array, shape (bins, bins)
        Mean similarity per bin, NaN for empty bins (rows: depth in model 1).
    counts : int array, shape (bins, bins)
        Number of layer pairs that fell in each bin.

    Examples
    --------
    >>> import numpy as np
    >>> c = Comparison.from_matrix(np.eye(5), n=10, k=2)
    >>> grid, counts = depth_binned_similarity([c], bins=4)
    >>> float(np.nanmax(grid)), int(counts.sum())
    (1.0, 32)
    """
    bins = _check_k(bins, "bins")
    total = np.zeros((bins, bins))
    count = np.zeros((bins, bins), dtype=np.int64)
    start = 0 if include_embeddings else 1
    for c in pairs:
        for matrix, la, lb in ((c.matrix, c.num_layers_a, c.num_layers_b),
                               (c.matrix.T, c.num_layers_b, c.num_layers_a)):
            rows = np.minimum((np.arange(start, la + 1) / la * bins).astype(int), bins - 1)
            cols = np.minimum((np.arange(start, lb + 1) / lb * bins).astype(int), bins - 1)
            rr, cc = np.meshgrid(rows, cols, indexing="ij")
            np.add.at(total, (rr, cc), matrix[start:, start:])
            np.add.at(count, (rr, cc), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return grid, count


class Zoo:
    """Layer similarities among several models on the same prompts.

    Attributes
    ----------
    names : list of str
    num_layers : list of int
    offsets : list of int
        Row where each model's block of :attr:`matrix` starts (its embeddings row).
    matrix : float64 array, shape (S, S), S = sum(L_i + 1)
        Similarity of every layer of every model with every other.
    pairs : dict
        ``(i, j) -> Comparison`` for ``i < j``.
    n, k : int
    dataset, pooling : str or None
    """

    def __init__(self, names, num_layers, matrix, pairs, *, n, k, dataset=None, pooling=None, meta=None):
        self.names = list(names)
        self.num_layers = [int(x) for x in num_layers]
        self.offsets = list(np.cumsum([0] + [x + 1 for x in self.num_layers[:-1]]))
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.pairs = dict(pairs)
        self.n, self.k = int(n), int(k)
        self.dataset, self.pooling = dataset, pooling
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        return f"Zoo({self.names}, n={self.n}, k={self.k})"

    @property
    def chance(self) -> float:
        return self.k / (self.n - 1)

    def _index(self, model: "int | str") -> int:
        if isinstance(model, str):
            if model not in self.names:
                raise ValueError(f"unknown model {model!r}; this zoo holds {self.names}")
            return self.names.index(model)
        if not 0 <= int(model) < len(self.names):
            raise ValueError(f"model index must be in [0, {len(self.names) - 1}], got {model}")
        return int(model)

    def comparison(self, a: "int | str", b: "int | str") -> Comparison:
        """The Comparison of models ``a`` and ``b`` (names or indices), in that orientation."""
        i, j = self._index(a), self._index(b)
        if i == j:
            raise ValueError("a and b must be different models")
        if i < j:
            return self.pairs[(i, j)]
        c = self.pairs[(j, i)]
        out = Comparison(c.matrix.T, n=c.n, k=c.k, names=c.names[::-1],
                         num_layers=(c.num_layers_b, c.num_layers_a),
                         per_prompt=None if c.per_prompt is None else np.swapaxes(c.per_prompt, 0, 1),
                         neighbors=(c.neighbors_b, c.neighbors_a), tie_rates=(c.tie_rate_b, c.tie_rate_a),
                         dataset=c.dataset, pooling=c.pooling, meta=c.meta)
        return out

    def unit_square(self, bins: int = 20) -> np.ndarray:
        """Mean similarity binned by normalised depth over all pairs, shape (bins, bins)."""
        return depth_binned_similarity(list(self.pairs.values()), bins)[0]

    def plot_unit_square(self, path: "str | os.PathLike", bins: int = 20) -> Path:
        from .plot import unit_square

        return unit_square(self.unit_square(bins), path, chance=self.chance, model_names=self.names,
                           subtitle=f"n={self.n}, k={self.k}, pooling={self.pooling}, "
                                    + (f"data={self.dataset}, " if self.dataset else "") + f"{bins}x{bins} bins")

    def plot_matrix(self, path: "str | os.PathLike", dpi: int = 200) -> Path:
        """Heatmap of the full block matrix with model boundaries."""
        from .plot import _pyplot, save_figure

        plt = _pyplot()
        size = self.matrix.shape[0]
        fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
        offdiag = self.matrix[~np.eye(size, dtype=bool)]
        im = ax.imshow(self.matrix, origin="lower", cmap="viridis", vmin=0,
                       vmax=float(offdiag.max()) if offdiag.size else 1.0, interpolation="nearest")
        for off in self.offsets[1:]:
            ax.axhline(off - 0.5, color="white", lw=1)
            ax.axvline(off - 0.5, color="white", lw=1)
        centres = [off + layers / 2 for off, layers in zip(self.offsets, self.num_layers)]
        ax.set_xticks(centres, self.names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(centres, self.names, fontsize=8)
        cbar = fig.colorbar(im, ax=ax, extend="max")
        cbar.set_label(f"mean k-NN overlap (colour scale capped at the largest off-diagonal value; "
                       f"red: chance {self.chance:.3f})", fontsize=7)
        cbar.ax.axhline(self.chance, color="red", lw=2)
        data = f", data={self.dataset}" if self.dataset else ""
        ax.set_title(f"All layers of all models (embeddings first in each block)\n"
                     f"n={self.n}, k={self.k}, pooling={self.pooling}{data}", fontsize=9)
        return save_figure(fig, path, dpi)

    def to_dict(self) -> dict:
        """JSON-serialisable report: matrix, unit square and each pair's depth statistics."""
        pairs = {}
        for (i, j), c in self.pairs.items():
            d = c.to_dict()
            pairs[f"{self.names[i]} | {self.names[j]}"] = {
                key: d[key] for key in ("depth_alignment", "verdict", "ci", "best_match_blocks")}
            if d["ci"]:
                pairs[f"{self.names[i]} | {self.names[j]}"]["ci"] = {"stats": d["ci"]["stats"]}
        return _jsonable({
            "names": self.names, "num_layers": self.num_layers, "offsets": self.offsets, "n": self.n,
            "k": self.k, "chance": self.chance, "dataset": self.dataset, "pooling": self.pooling,
            "matrix": self.matrix, "unit_square_20": self.unit_square(20), "pairs": pairs, "meta": self.meta,
        })

    def save(self, path: "str | os.PathLike") -> Path:
        """Write the block matrix and settings as ``.npz`` with a JSON ``meta`` string."""
        from .cache import write_npz_atomic

        meta = {"format": "layerknn.Zoo/1", "names": self.names, "num_layers": self.num_layers, "n": self.n,
                "k": self.k, "dataset": self.dataset, "pooling": self.pooling}
        write_npz_atomic(Path(path), {"matrix": self.matrix}, meta)
        return Path(path)


def zoo(models: Sequence[Any], texts: Any = None, *, k: int = 10, pooling: str = "last",
        names: Sequence[str] | None = None, cache: Any = True, bootstrap: int = 1000, seed: int = 0,
        progress: bool = False, device: Any = None, **extract_options) -> Zoo:
    """Compare every layer of every model with every other, computing each model once.

    Parameters
    ----------
    models : sequence
        Two or more models, each in any form :func:`layerknn.compare` accepts.
    texts : list of str or dataset spec, optional
        Needed unless every model is given as activations/arrays.
    k : int
        Neighbours per prompt (k + 1 are searched and cached).
    names : sequence of str, optional
        Display names.
    cache : bool, path or Cache, default True
        Neighbour lists and activations on disk (True: ``$LAYERKNN_CACHE_DIR`` or
        ``~/.cache/layerknn``), so adding a model recomputes only that model.
    bootstrap : int
        Bootstrap resamples per pair (0 to skip).

    Returns
    -------
    Zoo

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> rng = np.random.default_rng(0)
    >>> acts = [rng.standard_normal((L + 1, 40, 8)).astype(np.float32) for L in (2, 3, 4)]
    >>> z = layerknn.zoo(acts, k=3, cache=False, bootstrap=0)
    >>> z.matrix.shape, sorted(z.pairs)
    ((12, 12), [(0, 1), (0, 2), (1, 2)])
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"zoo needs at least two models, got {len(models)}")
    if names is not None and len(names) != len(models):
        raise ValueError(f"names must have one entry per model ({len(models)}), got {len(names)}")
    k = _check_k(k)
    text_list, dataset = resolve_texts(texts)
    store = _as_cache(cache)
    sides: list[ModelNeighbors] = []
    k_max = None
    for i, model in enumerate(models):
        label = names[i] if names is not None else f"model {i}"
        n_here = len(text_list) if text_list is not None else _array_n(model, label)
        if n_here < 2 or k > n_here - 1:
            raise ValueError(f"k must be in [1, n-1] = [1, {n_here - 1}] for n={n_here} prompts, got k={k}")
        k_max = min(k + 1, n_here - 1)
        side = model_neighbors(model, text_list, k_max=k_max, pooling=pooling, cache=store, progress=progress,
                               device=device, label=label, **dict(extract_options))
        if names is not None:
            side = ModelNeighbors(names[i], side.num_layers, side.indices, side.scores, side.info)
        if sides and side.n != sides[0].n:
            raise ValueError(f"every model must see the same prompts: {sides[0].name} has n={sides[0].n}, "
                             f"{side.name} has n={side.n}")
        sides.append(side)
    display = [s.name for s in sides]
    if len(set(display)) < len(display):
        display = [f"{nm} [{i}]" for i, nm in enumerate(display)]
    stacked = np.concatenate([s.indices[..., :k] for s in sides], axis=0)
    matrix, counts = overlap(stacked, stacked, k, per_prompt=True)
    offsets = np.cumsum([0] + [s.num_layers + 1 for s in sides])
    pairs = {}
    for i in range(len(sides)):
        for j in range(i + 1, len(sides)):
            rows = slice(offsets[i], offsets[i + 1])
            cols = slice(offsets[j], offsets[j + 1])
            pairs[(i, j)] = comparison_from_neighbors(
                sides[i], sides[j], k=k, names=(display[i], display[j]), dataset=dataset, pooling=pooling,
                bootstrap=bootstrap, seed=seed, progress=False,
                counts=(matrix[rows, cols], np.ascontiguousarray(counts[rows, cols])))
    return Zoo(display, [s.num_layers for s in sides], matrix, pairs, n=sides[0].n, k=k, dataset=dataset,
               pooling=pooling, meta={"models": [_jsonable(s.info) for s in sides]})


def _array_n(model: Any, label: str) -> int:
    if isinstance(model, ModelNeighbors):
        return model.n
    if isinstance(model, Neighbors):
        arr = model.indices
    elif hasattr(model, "values") and hasattr(model, "fingerprint"):
        arr = model.values
    else:
        arr = model
    if not hasattr(arr, "shape") or len(arr.shape) != 3:
        raise ValueError(f"texts is required: {label} is given as a model, not as activations of shape (layers, n, d)")
    return int(arr.shape[1])
