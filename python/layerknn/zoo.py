"""Many models at once: ``layerknn.zoo`` and the ``Zoo`` it returns (``compare`` is its two-model case).

One path from models to results: every model argument becomes neighbour lists once
(:mod:`layerknn.sources`, cached on disk), one overlap call over the layer-concatenated
lists gives the block matrix over all layers of all models (the "mega matrix"), and each
pair's statistics are computed from that pair's per-prompt counts, which are then dropped.
Peak memory is O(models × n × k) plus one pair's counts, so fifty models fit in a laptop.

Where the work runs is the executor's business (:mod:`layerknn.executors`): each model is
one *unit* and each pair one statistics job, run in this process (``executor="local"``) or
as tasks on a Ray cluster (``executor="ray"``) with bit-identical results.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import store
from .comparison import Comparison
from .executor_choice import get_executor
from .executors import Unit
from .options import DEFAULTS, ExtractOptions, LoadOptions, check_count
from .overlap import overlap
from .report import jsonable
from .sources import as_cache, prompt_count, resolve_texts
from .timings import timed

__all__ = ["Zoo", "zoo", "zoo_grid", "depth_binned_similarity"]

_KIND = "zoo"


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
    bins = check_count(bins, "bins", 1)
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
    neighbors : list of int32 arrays (L_i + 1, n, k) or None
    tie_rates : list of float arrays (L_i + 1,) or None
    pair_stats : dict
        ``(i, j) -> {"ci": bootstrap intervals, "calibration": PermutationNull}`` for ``i < j``.
    n, k : int
    dataset, pooling : str or None
    meta : dict
        Each model's provenance (``models``), timings, options, and ``units``: one record per
        model (``name``, ``seconds``, ``host``, Ray ``node`` id or None, ``cache`` use).
    """

    def __init__(self, names, num_layers, matrix, *, neighbors=None, tie_rates=None, pair_stats=None,
                 n: int, k: int, dataset=None, pooling=None, meta=None, measure: str = "mutual"):
        self.names = [str(x) for x in names]
        self.num_layers = [int(x) for x in num_layers]
        self.offsets = [int(x) for x in np.cumsum([0] + [x + 1 for x in self.num_layers[:-1]])]
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.neighbors = list(neighbors) if neighbors is not None else [None] * len(self.names)
        self.tie_rates = list(tie_rates) if tie_rates is not None else [None] * len(self.names)
        self.pair_stats = dict(pair_stats or {})
        self.n, self.k = int(n), int(k)
        self.dataset, self.pooling = dataset, pooling
        self.meta = dict(meta or {})
        self.measure = measure

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

    def _block(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i] + self.num_layers[i] + 1)

    def comparison(self, a: "int | str", b: "int | str") -> Comparison:
        """The Comparison of models ``a`` and ``b`` (names or indices); ``(b, a)`` is its exact transpose."""
        i, j = self._index(a), self._index(b)
        if i == j:
            raise ValueError("a and b must be different models")
        if i > j:
            return self.comparison(j, i).transpose()
        models = self.meta.get("models") or [None] * len(self.names)
        has_nbrs = self.neighbors[i] is not None and self.neighbors[j] is not None
        c = Comparison(self.matrix[self._block(i), self._block(j)], n=self.n, k=self.k,
                       names=(self.names[i], self.names[j]), num_layers=(self.num_layers[i], self.num_layers[j]),
                       neighbors=(self.neighbors[i], self.neighbors[j]) if has_nbrs else None,
                       tie_rates=(self.tie_rates[i], self.tie_rates[j]), dataset=self.dataset, pooling=self.pooling,
                       meta={"model_a": models[i], "model_b": models[j],
                             **{key: v for key, v in self.meta.items() if key != "models"}}, measure=self.measure)
        entry = self.pair_stats.get((i, j), {})
        c.ci = entry.get("ci")
        if entry.get("calibration") is not None:
            c.set_calibration(entry["calibration"])
        return c

    @property
    def pairs(self) -> dict:
        """``(i, j) -> Comparison`` for every ``i < j`` (built on access; counts derived when needed)."""
        return {(i, j): self.comparison(i, j) for i in range(len(self.names)) for j in range(i + 1, len(self.names))}

    def unit_square(self, bins: int = 20) -> np.ndarray:
        """Mean similarity binned by normalised depth over all pairs, shape (bins, bins)."""
        return depth_binned_similarity(list(self.pairs.values()), bins)[0]

    def plot_unit_square(self, path: "str | os.PathLike", bins: int = 20) -> Path:
        """Figure of :meth:`unit_square` (see :func:`layerknn.plot.unit_square`)."""
        from .plot import unit_square

        return unit_square(self.unit_square(bins), path, chance=self.chance, model_names=self.names,
                           subtitle=f"n={self.n}, k={self.k}, pooling={self.pooling}, "
                                    + (f"data={self.dataset}, " if self.dataset else "") + f"{bins}x{bins} bins")

    def _repr_html_(self) -> str:
        """Jupyter: the models and the block matrix inline (nothing written to disk)."""
        from .display import zoo_html

        return zoo_html(self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython terminals: one line per pair with its verdict."""
        if cycle:
            printer.text(repr(self))
            return
        lines = [repr(self)] + [f"  {c.name_a} vs {c.name_b}: {c.verdict()['verdict']}, max block similarity "
                                f"{c.matrix[1:, 1:].max():.3f}" for c in self.pairs.values()]
        printer.text("\n".join(lines))

    def plot_matrix(self, path: "str | os.PathLike", dpi: int = 200) -> Path:
        """Heatmap of the full block matrix with model boundaries (see :func:`layerknn.plot.zoo_matrix`)."""
        from .plot import zoo_matrix

        return zoo_matrix(self, path, dpi=dpi)

    def to_dict(self) -> dict:
        """JSON-serialisable report: matrix, unit square and each pair's depth statistics and verdict."""
        pairs = {}
        for (i, j), c in self.pairs.items():
            d = c.to_dict()
            entry = {key: d[key] for key in ("depth_alignment", "verdict", "best_match_blocks", "alignment")}
            entry["ci"] = {"stats": d["ci"]["stats"]} if d["ci"] else None
            pairs[f"{self.names[i]} | {self.names[j]}"] = entry
        return jsonable({
            "names": self.names, "num_layers": self.num_layers, "offsets": self.offsets, "n": self.n,
            "k": self.k, "chance": self.chance, "dataset": self.dataset, "pooling": self.pooling,
            "matrix": self.matrix, "unit_square_20": self.unit_square(20), "pairs": pairs, "meta": self.meta,
        })

    def save(self, path: "str | os.PathLike", *, include_neighbors: bool = True) -> Path:
        """Write everything (matrix, names, layer counts, neighbour lists, CIs, p-values, meta) to ``path``."""
        from .persist import zoo_arrays

        arrays, meta = zoo_arrays(self, include_neighbors)
        return store.write(path, arrays, meta, kind=_KIND)

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "Zoo":
        """Read a file written by :meth:`save` (ValueError naming the file when it is damaged)."""
        from .persist import zoo_parts

        arrays, meta = store.read(path, kind=_KIND)
        parts = zoo_parts(arrays, meta, str(path))
        return cls(parts.pop("names"), parts.pop("num_layers"), parts.pop("matrix"), **parts)


def _common_n(models: Sequence[Any], labels: Sequence[str], texts: list[str] | None, where: str = "") -> int:
    sizes = [(label, prompt_count(model, label)) for label, model in zip(labels, models)]
    sizes = [(label, n) for label, n in sizes if n is not None]
    if texts is not None:
        sizes.append(("texts", len(texts)))
    if not sizes:
        raise ValueError("texts is required when the models are given as names or model objects")
    if len({n for _, n in sizes}) > 1:
        detail = ", ".join(f"{label}: n={n}" for label, n in sizes)
        raise ValueError(f"the models and texts{where} must cover the same prompts; got {detail}")
    return sizes[0][1]


def zoo(models: Sequence[Any], texts: Any = None, *, k: int = DEFAULTS.k, measure: str = DEFAULTS.measure,
        pooling: str = DEFAULTS.pooling,
        names: Sequence[str] | None = None, cache: Any = DEFAULTS.cache, bootstrap: int = DEFAULTS.bootstrap,
        permutations: int = DEFAULTS.permutations, seed: int = DEFAULTS.seed,
        progress: "bool | Callable[[dict], Any]" = False, executor: Any = DEFAULTS.executor, device: Any = None,
        dtype: Any = DEFAULTS.dtype, max_length: int | None = DEFAULTS.max_length,
        batch_size: Any = DEFAULTS.batch_size, chat_template: bool = DEFAULTS.chat_template,
        trust_remote_code: bool = DEFAULTS.trust_remote_code) -> Zoo:
    """Compare every layer of every model with every other, computing each model once.

    Parameters
    ----------
    models : sequence
        Two or more models, each one of: a model name, alias (``layerknn.list_aliases()``)
        or local path; a loaded ``(model, tokenizer)`` pair or a model object; an
        ``Activations``; an array of shape (L + 1, n, d); or ``layerknn.Neighbors`` with at
        least k + 1 columns.  Arrays, activations and neighbours need no ``texts``.
    texts : list of str or str, optional
        The prompts, or a dataset spec such as ``"builtin:stdlib-docs?n=1024"``.
    k : int
        Neighbours per prompt, ``1 <= k <= n - 1`` (k + 1 are searched, to report ties).
    measure : {"mutual", "jaccard", "rank", "cycle", "lcs", "edit"}
        How two neighbour lists are compared (see :func:`layerknn.overlap`); "mutual" is the paper's.
    pooling : {"last", "mean", "mean_no_bos"}
        Token pooling of extracted activations.
    names : sequence of str, optional
        Display names (default: the model names; "A"/"B" or "model i" for arrays).
    cache : bool, path, fsspec URL or Cache
        Reuse activations and neighbour lists on disk (True: ``$LAYERKNN_CACHE_DIR`` or
        ``~/.cache/layerknn``; a URL such as ``"s3://bucket/layerknn"`` with its fsspec
        backend); an interrupted extraction resumes from its finished batches (in a folder).
    bootstrap, permutations : int
        Bootstrap resamples and permutation shuffles per pair (0 skips either).
    seed : int
        Seed of the bootstrap and permutation draws.
    progress : bool or callable
        Progress bars (model loading, extraction, k-NN search, statistics; with Ray, one bar
        over models).  A callable is instead called on this process with each model's record
        (see ``Zoo.meta["units"]``) as it finishes; an exception it raises stops the run.
    executor : str or executor object
        Where each model's unit (load, extract, k-NN search) and the pair statistics run:
        ``"local"`` (this process), ``"ray"`` (Ray tasks: the running cluster, else a new
        local one), ``"auto"`` or ``"ray://host:10001"`` (that cluster), or a
        :class:`layerknn.ray_executor.RayExecutor`.  Results are the same bit for bit.  With Ray,
        ``cache`` should be a folder or URL every node can read and write.
    device, dtype, trust_remote_code
        How models named by a string are loaded (see :func:`layerknn.load_model`); ``dtype``
        ``"auto"`` picks bfloat16 on CPUs with native bfloat16, and the report says which.
    max_length, batch_size, chat_template
        How activations are extracted (see :func:`layerknn.extract`).

    Returns
    -------
    Zoo

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> rng = np.random.default_rng(0)
    >>> acts = [rng.standard_normal((L + 1, 40, 8)).astype(np.float32) for L in (2, 3, 4)]
    >>> z = layerknn.zoo(acts, k=3, bootstrap=0, permutations=0)
    >>> z.matrix.shape, sorted(z.pairs)
    ((12, 12), [(0, 1), (0, 2), (1, 2)])
    """
    load = LoadOptions(dtype=str(dtype).replace("torch.", ""), device=device, trust_remote_code=trust_remote_code)
    extract = ExtractOptions(pooling=pooling, max_length=max_length, batch_size=batch_size,
                             chat_template=chat_template)
    return zoo_grid(models, [texts], ks=[k], names=names, cache=cache, bootstrap=bootstrap, permutations=permutations,
                    seed=seed, progress=progress, load=load, extract=extract, measure=measure,
                    executor=executor)[0][k]


def zoo_grid(models: Sequence[Any], datasets: Sequence[Any], *, ks: Sequence[int], names: Sequence[str] | None,
             cache: Any, bootstrap: int, permutations: int, seed: int, progress: Any, load: LoadOptions,
             extract: ExtractOptions, measure: str = DEFAULTS.measure, executor: Any = DEFAULTS.executor,
             dataset_names: Sequence[str] | None = None) -> list[dict[int, Zoo]]:
    """One :class:`Zoo` per dataset and k from one preparation.

    Every (model, dataset) unit goes to the executor in one submission (so Ray runs them side
    by side); each is searched once at max(ks) + 1.  ``datasets`` holds one texts argument per
    dataset (a list of prompts, a spec, or None for in-memory models); ``dataset_names`` names
    them in errors and unit records of a run over several.  Returns ``[{k: Zoo}]`` per dataset.
    """
    start = time.perf_counter()
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"zoo needs at least two models, got {len(models)}")
    if names is not None and len(names) != len(models):
        raise ValueError(f"names must have one entry per model ({len(models)}), got {len(names)}")
    ks = [check_count(k, "k", 1) for k in ks]
    if not ks:
        raise ValueError("ks must name at least one k")
    bootstrap = check_count(bootstrap, "bootstrap")
    permutations = check_count(permutations, "permutations")
    seed = check_count(seed, "seed")
    from .overlap import MEASURES

    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(map(repr, MEASURES))}, got {measure!r}")
    if not datasets:
        raise ValueError("datasets must hold at least one dataset")
    labels = list(names) if names is not None else (["A", "B"] if len(models) == 2 else
                                                      [f"model {i}" for i in range(len(models))])
    store_ = as_cache(cache)
    with timed(None, "", "texts"):
        resolved = [resolve_texts(texts, store_) for texts in datasets]
    sizes = []
    for d, (text_list, _) in enumerate(resolved):
        where = f" of dataset {dataset_names[d]!r}" if dataset_names else ""
        n = _common_n(models, labels, text_list, where)
        if n < 2 or max(ks) > n - 1:
            raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}] for n={n} prompts{where}, got k={max(ks)}")
        sizes.append(n)
    runner = get_executor(executor)
    on_done, progress = (progress, False) if callable(progress) else ((lambda record: None), bool(progress))
    units = [Unit(i, label, model, min(max(ks) + 1, n - 1), load, extract, store_, d,
                  dataset_names[d] if dataset_names else None)
             for d, n in enumerate(sizes) for i, (label, model) in enumerate(zip(labels, models))]
    done = runner.map_units(units, [text_list for text_list, _ in resolved], progress=progress, on_done=on_done)
    prepared = round(time.perf_counter() - start, 3)
    options = {"measure": measure, "bootstrap": bootstrap, "permutations": permutations, "seed": seed,
               **vars(load.resolved()), **vars(extract), "executor": runner.name}
    return [_zoos_of(done[d * len(models):(d + 1) * len(models)], n, ks, names, resolved[d][1], options,
                     runner, progress, start, prepared) for d, n in enumerate(sizes)]


def _zoos_of(done: list, n: int, ks: list[int], names: Sequence[str] | None, dataset: str | None, options: dict,
             runner: Any, progress: bool, start: float, prepared: float) -> dict[int, Zoo]:
    """One dataset's Zoo per k from its units' neighbour lists (overlap matrix, then the pair statistics)."""
    sides = [side for side, _ in done]
    for side in sides:
        if side.n != n:
            raise ValueError(f"every model must see the same prompts: {side.name} has n={side.n}, expected {n}")
    display = list(names) if names is not None else [s.name for s in sides]
    if len(set(display)) < len(display):
        display = ([f"{display[0]} (A)", f"{display[1]} (B)"] if len(display) == 2
                   else [f"{nm} [{i}]" for i, nm in enumerate(display)])
    measure, bootstrap, permutations = options["measure"], options["bootstrap"], options["permutations"]
    out = {}
    for k in ks:
        seconds = {"prepare": prepared}
        with timed(seconds, "overlap"):
            neighbors = [np.ascontiguousarray(s.indices[..., :k]) for s in sides]
            stacked = np.concatenate(neighbors, axis=0)
            matrix = np.asarray(overlap(stacked, stacked, k, measure=measure))
            del stacked
        result = Zoo(display, [s.num_layers for s in sides], matrix, neighbors=neighbors,
                     tie_rates=[s.tie_rates(k) for s in sides], n=n, k=k, dataset=dataset,
                     pooling=options["pooling"],
                     meta={"models": [jsonable(s.info) for s in sides], "options": jsonable({"k": k, **options}),
                           "units": [record for _, record in done], "seconds": seconds}, measure=measure)
        with timed(seconds, "statistics"):
            if bootstrap or permutations:
                keys = [(i, j) for i in range(len(sides)) for j in range(i + 1, len(sides))]
                blocks = {(i, j): matrix[result._block(i), result._block(j)] for i, j in keys}
                job = PairJob(n, k, tuple(result.num_layers), bootstrap, permutations, options["seed"], measure)
                result.pair_stats.update(runner.map_pairs(job, keys, blocks, neighbors, progress=progress))
        seconds["total"] = round(time.perf_counter() - start, 3)
        out[k] = result
    return out


@dataclass(frozen=True)
class PairJob:
    """One pair's bootstrap intervals and permutation null: a pure function of its block and neighbour lists."""

    n: int
    k: int
    num_layers: tuple[int, ...]
    bootstrap: int
    permutations: int
    seed: int
    measure: str = "mutual"

    def __call__(self, i: int, j: int, block: np.ndarray, neighbors_i: np.ndarray, neighbors_j: np.ndarray,
                 progress: bool = False) -> dict:
        c = Comparison(block, n=self.n, k=self.k, num_layers=(self.num_layers[i], self.num_layers[j]),
                       neighbors=(neighbors_i, neighbors_j), measure=self.measure)
        if self.bootstrap:
            with timed(None, "", "statistics: bootstrap"):
                c.bootstrap(self.bootstrap, seed=self.seed, progress=progress)
        if self.permutations:
            with timed(None, "", "statistics: permutations"):
                c.calibrate(self.permutations, seed=self.seed, progress=progress)
        return {"ci": c.ci, "calibration": c.calibration}
