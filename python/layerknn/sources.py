"""Sources: turn one model argument into the k_max nearest neighbours of every prompt at every layer.

A model argument may be a name, alias or path (loaded, then extracted); a loaded model or
``(model, tokenizer)`` pair (extracted); an :class:`~layerknn.Activations` or a bare
``(L + 1, n, d)`` array (searched); or :class:`~layerknn.Neighbors` (used as they are).
Whatever it is, it crosses this module once and comes out as :class:`ModelNeighbors`.

Models named by a string use the cache in three steps, cheapest first: a *link* from the
name (plus texts and options) to the extraction fingerprint serves a rerun without loading
the model; then cached neighbour lists; then cached activations; only then extraction,
whose finished batches are kept so that an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import stats
from .activations import Activations
from .cache import Cache
from .knn import Neighbors, knn
from .options import ExtractOptions, LoadOptions
from .timings import timed

__all__ = ["ModelNeighbors", "model_neighbors", "resolve_texts", "prompt_count", "as_cache"]


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
        Provenance: fingerprint, hidden size, pooling, dtype, token statistics, cache use, timings.
    """

    name: str
    num_layers: int
    indices: np.ndarray
    scores: np.ndarray | None
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.indices.shape[1])

    def tie_rates(self, k: int) -> np.ndarray | None:
        """Per layer, the fraction of prompts whose k-th and (k+1)-th scores tie (None without scores)."""
        if self.scores is None or self.scores.shape[-1] < k + 1:
            return None
        return stats.boundary_tie_rate(self.scores, k)


def as_cache(cache: Any) -> Cache | None:
    """``True`` -> the default cache, a path or fsspec URL -> a cache there, ``False``/``None`` -> no cache."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return Cache()
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return Cache(cache)
    raise TypeError(f"cache must be a bool, a folder path, an fsspec URL or a layerknn.Cache, "
                    f"got {type(cache).__name__}")


def resolve_texts(texts: Any, cache: Cache | None = None) -> tuple[list[str] | None, str | None]:
    """(list of prompts, dataset label) for a list of strings, a dataset spec or None (builtins kept in ``cache``)."""
    if texts is None:
        return None, None
    from .datasets import DatasetSpec, load_texts, parse_spec

    if isinstance(texts, (str, DatasetSpec)):
        spec = parse_spec(texts)
        return load_texts(spec, cache=cache), str(spec)
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
        raise TypeError(f"texts must be a list of strings or a dataset spec string, got a list holding {bad}")
    return texts, f"custom list ({len(texts)} texts)"


def _in_memory(model: Any, label: str) -> Activations | Neighbors | ModelNeighbors | None:
    """The model as an in-memory source, or None when it must be loaded/extracted."""
    if isinstance(model, (ModelNeighbors, Neighbors, Activations)):
        return model
    if isinstance(model, np.ndarray) or type(model).__module__.startswith("torch") and hasattr(model, "ndim") \
            and not hasattr(model, "forward"):
        return Activations.from_array(model, model_name=label)
    return None


def prompt_count(model: Any, label: str) -> int | None:
    """n for a model given in memory (activations, array, neighbours); None for models to extract."""
    source = _in_memory(model, label)
    if source is None:
        return None
    if isinstance(source, Activations):
        return source.num_texts
    indices = source.indices
    if getattr(indices, "ndim", 0) != 3:
        raise ValueError(f"{label} neighbours must have shape (layers, n, k), got {tuple(indices.shape)}")
    return int(indices.shape[1])


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x)


def search(values: Any, k_max: int, label: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine neighbours of the whole (L + 1, n, d) stack in one engine call."""
    if getattr(values, "ndim", None) != 3:
        raise ValueError(f"{label} activations must have shape (layers, n, d), got {tuple(values.shape)}")
    found = knn(values, k=k_max, progress=progress)
    return (_to_numpy(found.indices).astype(np.int32, copy=False),
            _to_numpy(found.scores).astype(np.float32, copy=False))


def model_neighbors(model: Any, texts: Sequence[str] | None, *, k_max: int, label: str,
                    load: LoadOptions = LoadOptions(), extract: ExtractOptions = ExtractOptions(),
                    cache: Cache | None = None, progress: bool = False) -> ModelNeighbors:
    """Neighbour lists of one model argument (see the module docstring for what it may be)."""
    source = _in_memory(model, label)
    if isinstance(source, ModelNeighbors):
        return source
    if isinstance(source, Neighbors):
        indices = _to_numpy(source.indices).astype(np.int32, copy=False)
        scores = _to_numpy(source.scores).astype(np.float32, copy=False)
        if indices.shape[-1] < k_max:
            raise ValueError(f"{label} neighbours hold k={indices.shape[-1]} columns but k + 1 = {k_max} are needed")
        return ModelNeighbors(label, indices.shape[0] - 1, indices[..., :k_max], scores[..., :k_max],
                              {"source": "neighbors"})
    if isinstance(source, Activations):
        if len(source.layers) != source.num_layers + 1:
            raise ValueError(f"{label} activations hold layers {list(source.layers)} of 0..{source.num_layers}; "
                             "a comparison needs all of them (extract with layers=None)")
        seconds: dict[str, float] = {}
        with timed(seconds, "knn"):
            idx, sc = search(source.values, k_max, label, progress)
        name = label if source.model_name in ("array", "") else source.model_name
        return ModelNeighbors(name, idx.shape[0] - 1, idx, sc,
                              {"source": "activations", "fingerprint": source.fingerprint,
                               "pooling": source.pooling, "hidden_size": source.hidden_size,
                               "seconds": seconds})
    if texts is None:
        raise ValueError(f"texts is required to extract activations from {label} ({display_name(model)!r}); "
                         "pass a list of strings or a dataset spec such as 'builtin:stdlib-docs'")
    return _extracted(model, list(texts), k_max=k_max, label=label, load=load.resolved(), extract=extract,
                      cache=cache, progress=progress)


def display_name(model: Any) -> str:
    """A short name for a model argument: the path's last part, an alias, or the model's config name."""
    if isinstance(model, (str, os.PathLike)):
        text = str(model).rstrip("/")
        return Path(text).name if os.path.sep in text else text
    from ._lens import unwrap_nnsight

    obj = unwrap_nnsight(model[0] if isinstance(model, tuple) else model, None)[0]
    cfg = getattr(obj, "config", None)
    lens_name = getattr(getattr(obj, "cfg", None), "model_name", None)  # TransformerLens
    return str(getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None) or lens_name
               or type(obj).__name__)


def _name_key(model: Any, texts: Sequence[str], load: LoadOptions, extract: ExtractOptions) -> str | None:
    """A cache key for a model given by alias or local path, computable without loading it.

    Covers the alias's package version (or the path's file sizes and times), the texts and
    every option that changes activations; None for hub names and in-memory models.
    """
    if not isinstance(model, (str, os.PathLike)):
        return None
    name = os.fspath(model)
    path = Path(name)
    if path.is_dir():
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
        ident: Any = {"path": str(path.resolve()), "files": files}
    elif path.is_file():
        st = path.stat()
        ident = {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    else:
        from .models import list_aliases

        row = next((r for r in list_aliases() if r["alias"] == name), None)
        if row is None or not row["installed"]:
            return None
        ident = {"alias": name, "package": row["package"], "version": metadata.version(row["package"])}
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    payload = {"model": ident, "texts": digest.hexdigest(), "n": len(texts), "dtype": load.dtype,
               "pooling": extract.pooling, "max_length": extract.max_length,
               "chat_template": bool(extract.chat_template)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _from_cache(hit: dict, label: str, how: str) -> ModelNeighbors:
    meta = hit["meta"]
    return ModelNeighbors(str(meta.get("model_name", label)), int(meta["num_layers"]), hit["indices"],
                          hit["scores"], dict(meta, cache=how))


def _extracted(model: Any, texts: list[str], *, k_max: int, label: str, load: LoadOptions,
               extract: ExtractOptions, cache: Cache | None, progress: bool) -> ModelNeighbors:
    n = len(texts)
    name = display_name(model)
    seconds: dict[str, float] = {}
    name_key = _name_key(model, texts, load, extract) if cache is not None else None
    if name_key is not None:  # rerun shortcut: no model loading at all
        with timed(None, "", "cache reads"):
            linked = cache.get_link(name_key)
            hit = cache.get_neighbors(linked, k_max, n=n) if linked else None
        if hit is not None:
            return _from_cache(hit, name, "neighbors")
    # the module, looked up at call time (the package re-exports a function of the same name); it imports
    # torch, which a rerun served by the link above never needs
    extraction = importlib.import_module(f"{__package__}.extract")
    with timed(seconds, "load", "model load"):
        model_obj, tokenizer = _load(model, name, load, progress)
    fingerprint = None
    if cache is not None:
        with timed(None, "", "fingerprint + cache reads"):
            fingerprint = extraction.fingerprint_for(
                model_obj, texts, pooling=extract.pooling, max_length=extract.max_length,
                chat_template=extract.chat_template, **({"tokenizer": tokenizer} if tokenizer is not None else {}))
            if name_key is not None:
                cache.put_link(name_key, fingerprint)
            hit = cache.get_neighbors(fingerprint, k_max, n=n)
            acts_hit = cache.get_activations(fingerprint, n=n) if hit is None else None
        if hit is not None:
            return _from_cache(hit, name, "neighbors")
        if acts_hit is not None:
            meta = acts_hit["meta"]
            with timed(seconds, "knn"):
                idx, sc = search(acts_hit["values"], k_max, name, progress)
            cache.put_neighbors(fingerprint, idx, sc, meta)
            return ModelNeighbors(str(meta.get("model_name", name)), int(meta["num_layers"]), idx, sc,
                                  dict(meta, cache="activations", seconds={"knn": seconds["knn"]}))
    resume_dir = cache.partial_folder(fingerprint) if cache is not None else None
    with timed(seconds, "extract", "extraction"):
        acts = extraction.extract(model_obj, texts, tokenizer=tokenizer, device=load.device, progress=progress,
                                  resume_dir=resume_dir, **extract.as_kwargs())
    values = _to_numpy(acts.values).astype(np.float32, copy=False)
    token_counts = _to_numpy(acts.token_counts).astype(np.int64)
    truncated = _to_numpy(acts.truncated).astype(bool)
    meta = {
        "model_name": name, "extracted_name": str(acts.model_name), "num_layers": int(values.shape[0] - 1),
        "hidden_size": int(values.shape[2]), "pooling": extract.pooling, "n": int(values.shape[1]),
        "fingerprint": fingerprint or acts.fingerprint, "max_length": acts.max_length,
        "dtype": str(getattr(model_obj, "dtype", "")).replace("torch.", "") or None,
        "mean_tokens": float(token_counts.mean()) if token_counts.size else None,
        "truncated": int(truncated.sum()),
    }
    if cache is not None:
        with timed(None, "", "cache writes"):
            cache.put_activations(fingerprint, values, meta, {"token_counts": token_counts, "truncated": truncated})
            cache.drop_partial(fingerprint)
    with timed(seconds, "knn"):
        idx, sc = search(values, k_max, name, progress)
    if cache is not None:
        with timed(None, "", "cache writes"):
            cache.put_neighbors(fingerprint, idx, sc, meta)
    return ModelNeighbors(name, meta["num_layers"], idx, sc,
                          dict(meta, cache="miss" if cache is not None else None, seconds=seconds))


def _load(model: Any, name: str, load: LoadOptions, progress: bool) -> tuple[Any, Any]:
    """(model, tokenizer or None) of a model argument: loaded when named by a string."""
    if isinstance(model, tuple):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .models import load_model

        if progress:
            print(f"loading {name} ...", file=sys.stderr, flush=True)
        return load_model(os.fspath(model), device=load.device, dtype=load.dtype,
                          trust_remote_code=load.trust_remote_code)
    return model, None


def activations_file(path: "str | os.PathLike") -> Activations:
    """Activations from an ``.npz``: one written by :meth:`Activations.save`, or a NumPy archive holding
    one (L + 1, n, d) array named ``values`` (or a single array), optionally with a ``model_name`` string."""
    from . import store

    try:
        return Activations.load(path)
    except store.FormatError as exc:
        if "no __layerknn__ header" not in str(exc):
            raise
    with np.load(path, allow_pickle=False) as data:
        names = [name for name in data.files if name != "model_name"]
        key = "values" if "values" in names else (names[0] if len(names) == 1 else None)
        if key is None:
            raise ValueError(f"{str(path)!r}: expected an array named 'values' of shape (layers, n, d), "
                             f"found arrays {sorted(data.files)}")
        values = data[key]
        name = str(data["model_name"]) if "model_name" in data.files else Path(path).stem
    if values.dtype.kind != "f":
        raise TypeError(f"{str(path)!r}: activations must be floating point, got {values.dtype}")
    return Activations.from_array(values.astype(np.float32, copy=False), model_name=name)
