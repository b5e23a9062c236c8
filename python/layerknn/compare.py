"""Compare two models layer by layer: ``layerknn.compare`` and the ``Comparison`` it returns.

``compare`` turns each model (a name/alias/path, a loaded model, extracted activations or
a bare (L+1, n, d) array) into k_max = k + 1 neighbours per prompt and layer, then takes
the neighbour overlap of every layer pair once, keeping the per-prompt counts.  All
uncertainty (bootstrap intervals, permutation p-values) is computed from those counts and
neighbour lists, so no extra k-NN search is ever needed.  ``Comparison`` also works on a
bare similarity matrix (``Comparison.from_matrix``) for everything that needs no counts.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import stats as _stats
from .cache import Cache, write_npz_atomic
from .knn import Neighbors, knn
from .overlap import overlap

__all__ = ["Comparison", "compare", "ModelNeighbors", "model_neighbors"]

_FORMAT = "layerknn.Comparison/1"


# ======================================================================================
# Turning one model argument into neighbour lists


@dataclass
class ModelNeighbors:
    """k_max neighbours of every prompt at every layer of one model.

    Attributes
    ----------
    name : str
    num_layers : int
        Blocks L (the arrays hold L + 1 rows: embeddings first).
    indices : int32 array, shape (L + 1, n, k_max)
    scores : float32 array or None, same shape
    info : dict
        Provenance: fingerprint, hidden size, pooling, token statistics, cache hit...
    """

    name: str
    num_layers: int
    indices: np.ndarray
    scores: np.ndarray | None
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.indices.shape[1])


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        if getattr(x, "is_cuda", False):
            x = x.cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _is_activations(obj: Any) -> bool:
    return hasattr(obj, "values") and hasattr(obj, "num_layers") and hasattr(obj, "fingerprint")


def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or (hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "ndim"))


def _neighbors_from_values(values: Any, k_max: int, what: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    if getattr(values, "ndim", None) != 3:
        shape = tuple(getattr(values, "shape", ()))
        raise ValueError(f"{what} activations must have shape (layers, n, d), got shape {shape}")
    layers = range(values.shape[0])
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc=f"kNN {what}", unit="layer", leave=False)
    idx, sc = [], []
    for layer in layers:
        nb = knn(values[layer], k=k_max)
        idx.append(_to_numpy(nb.indices))
        sc.append(_to_numpy(nb.scores))
    return np.stack(idx).astype(np.int32, copy=False), np.stack(sc).astype(np.float32, copy=False)


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return int(k)


def model_neighbors(model: Any, texts: Sequence[str] | None, *, k_max: int, pooling: str = "last",
                    cache: "Cache | None" = None, progress: bool = False, device: Any = None,
                    label: str = "model", **extract_options) -> ModelNeighbors:
    """Neighbour lists for one model argument (see :func:`compare` for what it may be).

    Extraction results and neighbour lists are looked up in / written to ``cache``
    (keyed by the extraction fingerprint and k_max) when one is given and the model is
    not an in-memory array.
    """
    if isinstance(model, ModelNeighbors):
        return model
    if isinstance(model, Neighbors):
        indices = _to_numpy(model.indices).astype(np.int32, copy=False)
        scores = _to_numpy(model.scores).astype(np.float32, copy=False)
        if indices.ndim != 3:
            raise ValueError(f"{label} neighbours must have shape (layers, n, k), got {indices.shape}")
        if indices.shape[-1] < k_max:
            raise ValueError(f"{label} neighbours hold k={indices.shape[-1]} columns but k_max={k_max} are needed")
        return ModelNeighbors(label, indices.shape[0] - 1, indices[..., :k_max], scores[..., :k_max],
                              {"source": "neighbors"})
    if _is_activations(model):
        layers = getattr(model, "layers", None)
        if layers is not None and len(layers) != int(model.num_layers) + 1:
            raise ValueError(f"{label} activations hold layers {list(layers)} of 0..{model.num_layers}; "
                             "compare needs all of them (extract with layers=None)")
        idx, sc = _neighbors_from_values(model.values, k_max, label, progress)
        return ModelNeighbors(str(getattr(model, "model_name", label)), idx.shape[0] - 1, idx, sc,
                              {"source": "activations", "fingerprint": getattr(model, "fingerprint", None),
                               "pooling": getattr(model, "pooling", None),
                               "hidden_size": getattr(model, "hidden_size", None)})
    if _is_array(model):
        idx, sc = _neighbors_from_values(model, k_max, label, progress)
        return ModelNeighbors(label, idx.shape[0] - 1, idx, sc, {"source": "array"})
    return _extract_neighbors(model, texts, k_max=k_max, pooling=pooling, cache=cache, progress=progress,
                              device=device, label=label, **extract_options)


def _display_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        text = str(model).rstrip("/")
        return Path(text).name if os.path.sep in text else text
    obj = model[0] if isinstance(model, tuple) else model
    cfg = getattr(obj, "config", None)
    return str(getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None) or type(obj).__name__)


def _name_key(model: Any, texts: Sequence[str], pooling: str, extract_options: dict) -> str | None:
    """A cache key for a model given by alias or local path, computable without loading it.

    Covers the alias's package version (or the path's file sizes and times), the texts and
    the options that change activations; None for hub names and in-memory models.
    """
    if not isinstance(model, (str, os.PathLike)):
        return None
    import hashlib
    from importlib import metadata

    name = os.fspath(model)
    path = Path(name)
    if path.is_dir():
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
        ident: Any = {"path": str(path.resolve()), "files": files}
    elif path.is_file():
        st = path.stat()
        ident = {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    else:
        try:
            from .models import list_aliases

            row = next((r for r in list_aliases() if r["alias"] == name), None)
            ident = {"alias": name, "package": row["package"], "version": metadata.version(row["package"])} \
                if row is not None and row["installed"] else None
        except Exception:  # noqa: BLE001 - no shortcut, the model gets loaded and fingerprinted
            ident = None
    if ident is None:
        return None
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    payload = {"model": ident, "texts": digest.hexdigest(), "n": len(texts), "pooling": pooling,
               "max_length": extract_options.get("max_length"),
               "chat_template": bool(extract_options.get("chat_template", False)),
               "dtype": str(extract_options.get("out_dtype", "float32")),
               "load_dtype": extract_options.get("_load_dtype")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _from_cached(hit: dict, name: str, how: str) -> ModelNeighbors:
    meta = hit["meta"]
    return ModelNeighbors(meta.get("model_name", name), int(meta["num_layers"]), hit["indices"], hit["scores"],
                          dict(meta, cache=how))


def _extract_neighbors(model: Any, texts, *, k_max, pooling, cache, progress, device, label,
                       **extract_options) -> ModelNeighbors:
    if texts is None:
        raise ValueError(f"texts is required to extract activations from {label} ({_display_name(model)!r}); "
                         "pass a list of strings or a dataset spec such as 'builtin:stdlib-docs'")
    if "layers" in extract_options and extract_options["layers"] is not None:
        raise ValueError("compare needs every layer of each model; the extract option 'layers' is not supported here")
    # the module, not the same-named function that layerknn/__init__.py re-exports
    _extract_mod = importlib.import_module(f"{__package__}.extract")

    name = _display_name(model)
    texts = list(texts)
    load_dtype = extract_options.pop("dtype", None)  # a load option, not an extract one
    if load_dtype is not None:
        extract_options["_load_dtype"] = str(load_dtype).replace("torch.", "")
    name_key = _name_key(model, texts, pooling, extract_options) if cache is not None else None
    if name_key is not None:  # rerun shortcut: no model loading at all
        linked = cache.get_link(name_key)
        hit = cache.get_neighbors(linked, k_max) if linked else None
        if hit is not None:
            return _from_cached(hit, name, "neighbors")
    if isinstance(model, tuple):
        model_obj, tokenizer = model
    elif isinstance(model, (str, os.PathLike)):
        from .models import load_model

        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"loading {name} ...", file=sys.stderr)
        model_obj, tokenizer = load_model(os.fspath(model), device=device, dtype=load_dtype)
    else:
        model_obj, tokenizer = model, extract_options.pop("tokenizer", None)
    extract_options.pop("_load_dtype", None)
    fingerprint = None
    if cache is not None:
        fp_kwargs = {"pooling": pooling, "max_length": extract_options.get("max_length"),
                     "chat_template": extract_options.get("chat_template", False)}
        if tokenizer is not None:
            fp_kwargs["tokenizer"] = tokenizer
        fingerprint = _extract_mod.fingerprint_for(model_obj, texts, **fp_kwargs)
        if name_key is not None:
            cache.put_link(name_key, fingerprint)
        hit = cache.get_neighbors(fingerprint, k_max)
        if hit is not None:
            return _from_cached(hit, name, "neighbors")
        acts_hit = cache.get_activations(fingerprint)
        if acts_hit is not None:
            meta = acts_hit["meta"]
            idx, sc = _neighbors_from_values(acts_hit["values"], k_max, meta.get("model_name", name), progress)
            cache.put_neighbors(fingerprint, idx, sc, meta)
            return ModelNeighbors(meta.get("model_name", name), int(meta["num_layers"]), idx, sc,
                                  dict(meta, cache="activations"))
    extract_kwargs = dict(extract_options)
    if tokenizer is not None:
        extract_kwargs["tokenizer"] = tokenizer
    acts = _extract_mod.extract(model_obj, texts, pooling=pooling, device=device, progress=progress,
                                **extract_kwargs)
    values = _to_numpy(acts.values).astype(np.float32, copy=False)
    token_counts = np.asarray(_to_numpy(getattr(acts, "token_counts", np.zeros(0))), dtype=np.int64)
    truncated = np.asarray(_to_numpy(getattr(acts, "truncated", np.zeros(0))), dtype=bool)
    meta = {
        "model_name": name,
        "extracted_name": str(getattr(acts, "model_name", name)),
        "num_layers": int(values.shape[0] - 1),
        "hidden_size": int(values.shape[2]),
        "pooling": pooling,
        "n": int(values.shape[1]),
        "fingerprint": fingerprint or getattr(acts, "fingerprint", None),
        "max_length": extract_options.get("max_length"),
        "dtype": str(getattr(model_obj, "dtype", "")).replace("torch.", "") or None,
        "mean_tokens": float(token_counts.mean()) if token_counts.size else None,
        "truncated": int(truncated.sum()) if truncated.size else None,
    }
    if cache is not None:
        cache.put_activations(fingerprint, values, meta, {"token_counts": token_counts, "truncated": truncated})
    idx, sc = _neighbors_from_values(values, k_max, name, progress)
    if cache is not None:
        cache.put_neighbors(fingerprint, idx, sc, meta)
    return ModelNeighbors(name, meta["num_layers"], idx, sc, dict(meta, cache="miss" if cache else None))


def _as_cache(cache: Any) -> "Cache | None":
    if cache is None or cache is False:
        return None
    if cache is True:
        return Cache()
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return Cache(cache)
    raise TypeError(f"cache must be a bool, a directory path or a layerknn.Cache, got {type(cache).__name__}")


def resolve_texts(texts: Any) -> tuple[list[str] | None, str | None]:
    """(list of prompts, dataset label) for a list, a spec string or None."""
    if texts is None:
        return None, None
    if isinstance(texts, str):
        from .datasets import load_texts, parse_spec

        return load_texts(texts), str(parse_spec(texts))
    from .datasets import DatasetSpec, load_texts

    if isinstance(texts, DatasetSpec):
        return load_texts(texts), str(texts)
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings or a dataset spec string")
    return texts, f"custom list ({len(texts)} texts)"


# ======================================================================================
# The result object


class Comparison:
    """Layer-by-layer similarity of two models on the same prompts.

    Attributes
    ----------
    matrix : float64 array, shape (La + 1, Lb + 1)
        Mean over prompts of ``|N_a(i) ∩ N_b(i)| / k`` (row/column 0: embeddings).
    per_prompt : uint16 array, shape (La + 1, Lb + 1, n), or None
        Intersection sizes per prompt (None for :meth:`from_matrix`).
    k, n : int
    chance : float
        ``k / (n - 1)``, the expected overlap of unrelated neighbour sets.
    names : tuple of str
        Model names (A, B).
    num_layers_a, num_layers_b : int
        Block counts La, Lb.
    dataset, pooling : str or None
    tie_rate_a, tie_rate_b : float arrays (L + 1,) or None
        Per layer, the fraction of prompts whose k-th and (k+1)-th neighbour scores tie
        (a non-unique neighbour set; typical of the embedding row under last-token pooling).
    neighbors_a, neighbors_b : int32 arrays (L + 1, n, k) or None
        Kept for the permutation test.
    ci : dict or None
        Bootstrap intervals, filled by :meth:`bootstrap`.
    p_values : float array (La + 1, Lb + 1) or None
        Filled by :meth:`permutation_test`.

    Examples
    --------
    >>> import numpy as np
    >>> c = Comparison.from_matrix(np.eye(4) * 0.5 + 0.01, n=100, k=5, names=("a", "b"))
    >>> c.best_match()["a_to_b"].tolist()
    [0, 1, 2, 3]
    >>> round(c.depth_alignment()["spearman_ab"], 3)
    1.0
    """

    def __init__(self, matrix: Any, *, n: int, k: int, names: Sequence[str] = ("A", "B"),
                 num_layers: Sequence[int] | None = None, per_prompt: np.ndarray | None = None,
                 neighbors: tuple[np.ndarray, np.ndarray] | None = None,
                 tie_rates: tuple[np.ndarray | None, np.ndarray | None] | None = None,
                 dataset: str | None = None, pooling: str | None = None, meta: dict | None = None):
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or min(matrix.shape) < 2:
            raise ValueError(f"matrix must have shape (La + 1, Lb + 1) with La, Lb >= 1, got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("matrix must hold finite values")
        n = _check_k(n, "n")
        k = _check_k(k, "k")
        if n < 2 or k > n - 1:
            raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got k={k} (n={n})")
        self.matrix = matrix
        self.n, self.k = n, k
        names = tuple(str(s) for s in (names if names is not None else ("A", "B")))
        if len(names) != 2:
            raise ValueError(f"names must hold two strings, got {names!r}")
        self.names = names
        la, lb = num_layers if num_layers is not None else (matrix.shape[0] - 1, matrix.shape[1] - 1)
        if (la + 1, lb + 1) != matrix.shape:
            raise ValueError(f"num_layers {(la, lb)} do not match matrix shape {matrix.shape}")
        self.num_layers_a, self.num_layers_b = int(la), int(lb)
        if per_prompt is not None:
            per_prompt = np.asarray(per_prompt)
            if per_prompt.shape != matrix.shape + (n,):
                raise ValueError(f"per_prompt must have shape {matrix.shape + (n,)}, got {per_prompt.shape}")
        self.per_prompt = per_prompt
        self.neighbors_a, self.neighbors_b = neighbors if neighbors is not None else (None, None)
        self.tie_rate_a, self.tie_rate_b = tie_rates if tie_rates is not None else (None, None)
        self.dataset, self.pooling = dataset, pooling
        self.meta = dict(meta or {})
        self.ci: dict | None = None
        self.p_values: np.ndarray | None = None
        self.permutation_info: dict | None = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_matrix(cls, matrix: Any, *, n: int, k: int, names: Sequence[str] | None = None,
                    dataset: str | None = None, pooling: str | None = None) -> "Comparison":
        """Wrap a bare (La + 1) x (Lb + 1) similarity matrix, e.g. one published elsewhere.

        Analyses that need per-prompt counts (bootstrap, permutation test) raise ValueError.

        Examples
        --------
        >>> import numpy as np
        >>> c = Comparison.from_matrix(np.full((3, 4), 0.2), n=50, k=5)
        >>> c.num_layers_a, c.num_layers_b, round(c.chance, 4)
        (2, 3, 0.102)
        """
        return cls(matrix, n=n, k=k, names=names or ("A", "B"), dataset=dataset, pooling=pooling)

    # ------------------------------------------------------------------ basic properties
    @property
    def chance(self) -> float:
        """``k / (n - 1)``."""
        return self.k / (self.n - 1)

    @property
    def name_a(self) -> str:
        return self.names[0]

    @property
    def name_b(self) -> str:
        return self.names[1]

    def __repr__(self) -> str:
        return (f"Comparison({self.name_a!r} [{self.num_layers_a} blocks] vs {self.name_b!r} "
                f"[{self.num_layers_b} blocks], n={self.n}, k={self.k}, max={self.matrix.max():.3f}, "
                f"chance={self.chance:.4f})")

    def _need_counts(self, what: str) -> np.ndarray:
        if self.per_prompt is None:
            raise ValueError(f"{what} needs per-prompt overlap counts, which this Comparison lacks "
                             "(it was built from a bare matrix); run layerknn.compare on activations instead")
        return self.per_prompt

    # ------------------------------------------------------------------ analyses
    def best_match(self, include_embeddings: bool = True) -> dict:
        """Best-matching layer of B for every layer of A, and the reverse.

        Ties (equal similarity) go to the candidate closest to the diagonal in normalised
        depth, then to the lowest index.

        Parameters
        ----------
        include_embeddings : bool, default True
            Include row/column 0 (embeddings) as both source and candidate.

        Returns
        -------
        dict
            ``layers_a``, ``a_to_b`` (B layer index per A layer), ``a_to_b_depth``,
            ``layers_b``, ``b_to_a``, ``b_to_a_depth`` (numpy arrays).
        """
        s = _stats.depth_alignment_stats(self.matrix, self.num_layers_a, self.num_layers_b,
                                         include_embeddings=include_embeddings)
        start = 0 if include_embeddings else 1
        return {
            "layers_a": np.arange(start, self.num_layers_a + 1),
            "a_to_b": s["best_ab"], "a_to_b_depth": s["best_depth_ab"],
            "layers_b": np.arange(start, self.num_layers_b + 1),
            "b_to_a": s["best_ba"], "b_to_a_depth": s["best_depth_ba"],
        }

    def depth_alignment(self, near: float = 0.1, far: float = 0.3, include_embeddings: bool = False) -> dict:
        """Do best matches sit at the same normalised depth (l / L) in both models?

        Returns
        -------
        dict
            ``spearman_ab``, ``spearman_ba``, ``mean_abs_depth_error`` (+ ``_ab``, ``_ba``),
            ``near_mean`` (mean similarity of cells with |Δdepth| <= near), ``far_mean``
            (|Δdepth| > far); blocks 1..L only unless ``include_embeddings``.
        """
        s = _stats.depth_alignment_stats(self.matrix, self.num_layers_a, self.num_layers_b,
                                         near=near, far=far, include_embeddings=include_embeddings)
        return {key: s[key] for key in _stats.DEPTH_STATS}

    def bootstrap(self, n_boot: int = 1000, seed: int | None = 0, level: float = 0.95, *,
                  near: float = 0.1, far: float = 0.3, include_embeddings: bool = False,
                  progress: bool = False) -> dict:
        """Bootstrap intervals over prompts for every cell and every depth statistic.

        Prompts are resampled with replacement ``n_boot`` times (seeded); each replicate's
        matrix comes from the per-prompt counts.  The result is stored in ``self.ci``.

        Caveat: prompts' overlaps are not fully independent (reciprocal neighbours make
        them come in pairs), so cell intervals run somewhat narrow; on unrelated models
        they are ~1/sqrt(2) of the true spread.  Use :meth:`permutation_test` to test
        cells against chance.

        Returns
        -------
        dict
            ``matrix_low``/``matrix_high`` (La+1, Lb+1), ``stats`` {name: (low, high)},
            ``best_depth_ab_low``/``_high`` and ``best_depth_ba_low``/``_high`` (per block),
            and the settings.
        """
        counts = self._need_counts("bootstrap")
        n_boot = _check_k(n_boot, "n_boot")
        weights = _stats.bootstrap_weights(self.n, n_boot, seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=counts.shape[0] * counts.shape[1], desc="bootstrap", unit="cell", leave=False)
        try:
            totals = _stats.bootstrap_cell_totals(counts, weights, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        means = totals / (self.n * self.k)
        m_lo, m_hi = _stats.percentile_ci(means, level, axis=0)
        reps = _stats.depth_alignment_stats(means, self.num_layers_a, self.num_layers_b, near=near, far=far,
                                            include_embeddings=include_embeddings)
        stat_ci = {}
        for name in _stats.DEPTH_STATS:
            lo, hi = _stats.percentile_ci(reps[name], level)
            stat_ci[name] = (float(lo), float(hi))
        ab_lo, ab_hi = _stats.percentile_ci(reps["best_depth_ab"], level, axis=0)
        ba_lo, ba_hi = _stats.percentile_ci(reps["best_depth_ba"], level, axis=0)
        self.ci = {
            "n_boot": n_boot, "seed": seed, "level": level, "near": near, "far": far,
            "include_embeddings": include_embeddings,
            "matrix_low": m_lo, "matrix_high": m_hi, "stats": stat_ci,
            "best_depth_ab_low": ab_lo, "best_depth_ab_high": ab_hi,
            "best_depth_ba_low": ba_lo, "best_depth_ba_high": ba_hi,
        }
        return self.ci

    def permutation_test(self, n_perm: int = 1000, seed: int | None = 0, *, progress: bool = False) -> np.ndarray:
        """Per-cell p-values against chance by shuffling which prompt of B pairs with which of A.

        See :func:`layerknn.stats.permutation_pvalues`. Stored in ``self.p_values``.
        """
        if self.neighbors_a is None or self.neighbors_b is None:
            raise ValueError("permutation_test needs the neighbour lists, which this Comparison lacks "
                             "(it was built from a bare matrix or loaded without them)")
        n_perm = _check_k(n_perm, "n_perm")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_perm, desc="permutations", unit="perm", leave=False)
        try:
            self.p_values = _stats.permutation_pvalues(
                self.neighbors_a, self.neighbors_b, self.k, self.matrix, n_perm=n_perm, seed=seed,
                overlap=lambda a, b, k: overlap(a, b, k), progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        self.permutation_info = {"n_perm": n_perm, "seed": seed}
        return self.p_values

    # ------------------------------------------------------------------ reporting
    def verdict(self) -> dict:
        """Whether best matches track normalised depth, from the Spearman statistics.

        "yes" when both directions' Spearman correlations are positive with a bootstrap
        interval above 0 (point values > 0 when there is no bootstrap), else "no".
        """
        da = self.depth_alignment(**self._ci_geometry())
        rho = (da["spearman_ab"], da["spearman_ba"])
        if self.ci is not None:
            lows = (self.ci["stats"]["spearman_ab"][0], self.ci["stats"]["spearman_ba"][0])
            tracks = all(np.isfinite(lo) and lo > 0 for lo in lows)
            basis = (f"criterion: {int(round(self.ci['level'] * 100))}% bootstrap CI of Spearman above 0 in both "
                     f"directions; lower bounds {lows[0]:.3f} (A->B), {lows[1]:.3f} (B->A)")
        else:
            tracks = all(np.isfinite(r) and r > 0 for r in rho)
            basis = "criterion: Spearman > 0 in both directions (no bootstrap CI: per-prompt counts unavailable)"
        return {"tracks_depth": bool(tracks), "basis": basis}

    def _ci_geometry(self) -> dict:
        if self.ci is None:
            return {}
        return {key: self.ci[key] for key in ("near", "far", "include_embeddings")}

    def summary(self) -> str:
        """A plain-text report: settings, similarity levels, best-match depth tracking with CIs."""
        geometry = self._ci_geometry()
        da = self.depth_alignment(**geometry)
        near, far = geometry.get("near", 0.1), geometry.get("far", 0.3)
        ci = self.ci["stats"] if self.ci else {}
        level = f"{int(round(self.ci['level'] * 100))}% CI " if self.ci else ""

        def fmt(name: str, digits: int = 3) -> str:
            value = da[name]
            text = f"{value:.{digits}f}"
            if name in ci:
                lo, hi = ci[name]
                text += f" [{level}{lo:.{digits}f}, {hi:.{digits}f}]"
            return text

        blocks = self.matrix[1:, 1:]
        i, j = (int(x) + 1 for x in np.unravel_index(np.argmax(blocks), blocks.shape))
        v = self.verdict()
        run = []
        for label in ("a", "b"):
            info = self.meta.get(f"model_{label}") or {}
            if info.get("dtype") or info.get("max_length"):
                run.append(f"{label.upper()}: {info.get('dtype') or '?'} weights, max_length "
                           f"{info.get('max_length')}, {info.get('truncated') or 0} prompts truncated")
        lines = [
            f"layerknn comparison: A = {self.name_a} ({self.num_layers_a} blocks), "
            f"B = {self.name_b} ({self.num_layers_b} blocks)",
            f"data: {self.dataset or 'n/a'}; n = {self.n} prompts; k = {self.k}; "
            f"pooling = {self.pooling or 'n/a'}; chance = k/(n-1) = {self.chance:.4f}",
        ]
        if run:
            lines.append("extraction: " + "; ".join(run))
        lines += [
            f"similarity over blocks: max {blocks.max():.3f} at A block {i} / B block {j} "
            f"({blocks.max() / self.chance:.1f}x chance); mean {blocks.mean():.3f}; "
            f"embeddings (row/col 0) x embeddings {self.matrix[0, 0]:.3f}",
            f"near-diagonal mean (|depth difference| <= {near}): {fmt('near_mean')}",
            f"off-diagonal mean  (|depth difference| >  {far}): {fmt('far_mean')}",
            f"best-match depth tracking (blocks only): Spearman A->B {fmt('spearman_ab')}, "
            f"B->A {fmt('spearman_ba')}",
            f"mean |depth error| of best matches: {fmt('mean_abs_depth_error')}",
            f"VERDICT: best matches {'TRACK' if v['tracks_depth'] else 'do NOT track'} normalised depth "
            f"({v['basis']})",
        ]
        if self.p_values is not None:
            sig = int((self.p_values <= 0.05).sum())
            lines.append(f"permutation test ({self.permutation_info['n_perm']} shuffles): {sig} of "
                         f"{self.p_values.size} cells above chance at p <= 0.05 "
                         f"(smallest attainable p = {1 / (1 + self.permutation_info['n_perm']):.4f})")
        for label, rates in (("A", self.tie_rate_a), ("B", self.tie_rate_b)):
            if rates is not None:
                block_rates = rates[1:]
                warn = ("  <- tie-dominated: its neighbour sets are arbitrary (lowest index wins), so row/col 0 "
                        "is left out of the depth statistics" if rates[0] > 0.5 else "")
                lines.append(f"prompts with tied k-th/(k+1)-th neighbour scores in {label}: embeddings "
                             f"{rates[0]:.1%}, blocks max {block_rates.max():.1%} "
                             f"(block {int(np.argmax(block_rates)) + 1}){warn}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable report (matrices as nested lists)."""
        geometry = self._ci_geometry()
        bm = self.best_match()
        bm_blocks = self.best_match(include_embeddings=False)
        out = {
            "format": _FORMAT,
            "names": list(self.names), "num_layers": [self.num_layers_a, self.num_layers_b],
            "n": self.n, "k": self.k, "chance": self.chance, "dataset": self.dataset, "pooling": self.pooling,
            "matrix": self.matrix.tolist(),
            "best_match": {key: np.asarray(v).tolist() for key, v in bm.items()},
            "best_match_blocks": {key: np.asarray(v).tolist() for key, v in bm_blocks.items()},
            "depth_alignment": _jsonable(self.depth_alignment(**geometry)),
            "verdict": self.verdict(),
            "tie_rate_a": None if self.tie_rate_a is None else self.tie_rate_a.tolist(),
            "tie_rate_b": None if self.tie_rate_b is None else self.tie_rate_b.tolist(),
            "ci": None, "p_values": None, "permutation": self.permutation_info,
            "meta": _jsonable(self.meta),
        }
        if self.ci is not None:
            out["ci"] = _jsonable(self.ci)
        if self.p_values is not None:
            out["p_values"] = self.p_values.tolist()
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: "str | os.PathLike") -> Path:
        """Write an ``.npz`` (arrays + a JSON ``meta`` string; no pickles). Returns the path.

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> c = Comparison.from_matrix(np.eye(3) + 0.1, n=20, k=3)
        >>> p = c.save(os.path.join(tempfile.mkdtemp(), "c.npz"))
        >>> np.allclose(Comparison.load(p).matrix, c.matrix)
        True
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"matrix": self.matrix}
        for key in ("per_prompt", "neighbors_a", "neighbors_b", "tie_rate_a", "tie_rate_b", "p_values"):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = np.asarray(value)
        ci_meta = None
        if self.ci is not None:
            ci_meta = {key: v for key, v in self.ci.items() if not isinstance(v, np.ndarray)}
            for key, v in self.ci.items():
                if isinstance(v, np.ndarray):
                    arrays[f"ci_{key}"] = v
        meta = {
            "format": _FORMAT, "names": list(self.names), "num_layers": [self.num_layers_a, self.num_layers_b],
            "n": self.n, "k": self.k, "dataset": self.dataset, "pooling": self.pooling,
            "ci": _jsonable(ci_meta), "permutation": self.permutation_info, "meta": _jsonable(self.meta),
        }
        write_npz_atomic(path, arrays, meta)
        return path

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "Comparison":
        """Read a file written by :meth:`save` (``np.load(allow_pickle=False)``)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read a layerknn comparison from {str(path)!r}: {exc}") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a layerknn comparison file (format {meta.get('format')!r})")
        neighbors = None
        if "neighbors_a" in arrays and "neighbors_b" in arrays:
            neighbors = (arrays["neighbors_a"], arrays["neighbors_b"])
        c = cls(arrays["matrix"], n=meta["n"], k=meta["k"], names=meta["names"], num_layers=meta["num_layers"],
                per_prompt=arrays.get("per_prompt"), neighbors=neighbors,
                tie_rates=(arrays.get("tie_rate_a"), arrays.get("tie_rate_b")),
                dataset=meta.get("dataset"), pooling=meta.get("pooling"), meta=meta.get("meta"))
        if meta.get("ci") is not None:
            ci = dict(meta["ci"])
            ci["stats"] = {key: tuple(v) for key, v in ci["stats"].items()}
            for key in list(arrays):
                if key.startswith("ci_"):
                    ci[key[3:]] = arrays[key]
            c.ci = ci
        if "p_values" in arrays:
            c.p_values = arrays["p_values"]
            c.permutation_info = meta.get("permutation")
        return c

    # ------------------------------------------------------------------ figures
    def plot(self, path: "str | os.PathLike", **kwargs) -> Path:
        """Heatmap of the similarity matrix (see :func:`layerknn.plot.heatmap`)."""
        from .plot import heatmap

        return heatmap(self, path, **kwargs)

    def plot_depth(self, path: "str | os.PathLike", **kwargs) -> Path:
        """Best-match depth curves with bootstrap bands (see :func:`layerknn.plot.depth_curve`)."""
        from .plot import depth_curve

        return depth_curve(self, path, **kwargs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ======================================================================================
# compare()


def compare(model_a: Any, model_b: Any, texts: Any = None, *, k: int = 10, pooling: str = "last",
            names: Sequence[str] | None = None, cache: Any = False, bootstrap: int = 1000,
            permutations: int = 0, seed: int = 0, progress: bool = False, device: Any = None,
            **extract_options) -> Comparison:
    """Compare every layer of ``model_a`` with every layer of ``model_b`` on the same prompts.

    Parameters
    ----------
    model_a, model_b
        Each one of: a model name, alias (``layerknn.list_aliases()``) or local path; a
        loaded ``(model, tokenizer)`` tuple or a model object; an ``Activations`` from
        ``layerknn.extract``; an array of shape (L + 1, n, d); or ``layerknn.Neighbors``
        with at least k + 1 columns.  Arrays and activations need no ``texts``.
    texts : list of str or str, optional
        The prompts, or a dataset spec such as ``"builtin:stdlib-docs?n=1024"``
        (see :mod:`layerknn.datasets`).
    k : int, default 10
        Neighbours per prompt; ``1 <= k <= n - 1``.  k + 1 neighbours are searched so that
        ties at the k-th place can be reported.
    pooling : str, default "last"
        Passed to extraction.
    names : (str, str), optional
        Display names (default: the model names, or "A"/"B" for arrays).
    cache : bool, path or Cache, default False
        Reuse activations / neighbour lists stored on disk (True: the default directory).
    bootstrap : int, default 1000
        Bootstrap resamples for confidence intervals (0 to skip).
    permutations : int, default 0
        Shuffles for per-cell permutation p-values (0 to skip).
    seed : int
        Seed of bootstrap and permutation draws.
    progress : bool
        Show tqdm progress bars.
    device
        Where models run (extraction only).
    **extract_options
        Passed to ``layerknn.extract`` (e.g. ``max_length``, ``batch_size``, ``chat_template``);
        ``dtype`` (e.g. ``torch.bfloat16``) is the parameter dtype for models loaded by name.

    Returns
    -------
    Comparison

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> acts = np.random.default_rng(0).standard_normal((4, 60, 16)).astype(np.float32)
    >>> c = layerknn.compare(acts, acts, k=5, bootstrap=50)
    >>> c.matrix.diagonal().tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> c.per_prompt.shape
    (4, 4, 60)
    """
    k = _check_k(k)
    if not isinstance(bootstrap, numbers.Integral) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not isinstance(permutations, numbers.Integral) or permutations < 0:
        raise ValueError(f"permutations must be an integer >= 0, got {permutations!r}")
    text_list, dataset = resolve_texts(texts)
    n = _infer_n(model_a, model_b, text_list)
    if n < 2 or k > n - 1:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}] for n={n} prompts, got k={k}")
    k_max = min(k + 1, n - 1)
    store = _as_cache(cache)
    sides = []
    for label, model in (("A", model_a), ("B", model_b)):
        sides.append(model_neighbors(model, text_list, k_max=k_max, pooling=pooling, cache=store,
                                     progress=progress, device=device, label=label, **dict(extract_options)))
    side_a, side_b = sides
    if side_a.n != side_b.n:
        raise ValueError(f"the two models must see the same prompts: model A has n={side_a.n}, "
                         f"model B has n={side_b.n}")
    return comparison_from_neighbors(side_a, side_b, k=k, names=names, dataset=dataset, pooling=pooling,
                                     bootstrap=bootstrap, permutations=permutations, seed=seed,
                                     progress=progress)


def comparison_from_neighbors(side_a: ModelNeighbors, side_b: ModelNeighbors, *, k: int,
                              names: Sequence[str] | None = None, dataset: str | None = None,
                              pooling: str | None = None, bootstrap: int = 0, permutations: int = 0,
                              seed: int = 0, progress: bool = False,
                              counts: tuple[np.ndarray, np.ndarray] | None = None) -> Comparison:
    """Build a :class:`Comparison` from two models' neighbour lists (``counts`` = precomputed overlap)."""
    if counts is None:
        matrix, per_prompt = overlap(side_a.indices, side_b.indices, k, per_prompt=True)
    else:
        matrix, per_prompt = counts
    ties = []
    for side in (side_a, side_b):
        ok = side.scores is not None and side.scores.shape[-1] >= k + 1
        ties.append(_stats.boundary_tie_rate(side.scores, k) if ok else None)
    if names is None:
        names = (side_a.name, side_b.name)
        if names[0] == names[1]:
            names = (f"{names[0]} (A)", f"{names[1]} (B)")
    c = Comparison(np.asarray(matrix), n=side_a.n, k=k, names=names,
                   num_layers=(side_a.num_layers, side_b.num_layers), per_prompt=np.asarray(per_prompt),
                   neighbors=(np.ascontiguousarray(side_a.indices[..., :k]),
                              np.ascontiguousarray(side_b.indices[..., :k])),
                   tie_rates=tuple(ties), dataset=dataset, pooling=pooling,
                   meta={"model_a": _jsonable(side_a.info), "model_b": _jsonable(side_b.info)})
    if bootstrap:
        c.bootstrap(bootstrap, seed=seed, progress=progress)
    if permutations:
        c.permutation_test(permutations, seed=seed, progress=progress)
    return c


def _infer_n(model_a: Any, model_b: Any, texts: list[str] | None) -> int:
    sizes = []
    for label, model in (("A", model_a), ("B", model_b)):
        if isinstance(model, ModelNeighbors):
            sizes.append((label, model.n))
        elif isinstance(model, Neighbors) or _is_activations(model) or _is_array(model):
            arr = model.indices if isinstance(model, Neighbors) else (model.values if _is_activations(model) else model)
            if getattr(arr, "ndim", 0) != 3:
                raise ValueError(f"model {label} activations must have shape (layers, n, d), "
                                 f"got shape {tuple(getattr(arr, 'shape', ()))}")
            sizes.append((label, int(arr.shape[1])))
    if texts is not None:
        sizes.append(("texts", len(texts)))
    if not sizes:
        raise ValueError("texts is required when the models are given as names or model objects")
    if len({s for _, s in sizes}) > 1:
        detail = ", ".join(f"{label}: n={s}" for label, s in sizes)
        raise ValueError(f"the models and texts must cover the same prompts; got {detail}")
    return sizes[0][1]
