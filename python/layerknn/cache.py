"""The on-disk cache: activations and neighbour lists keyed by the extraction fingerprint.

One root (the ``path`` argument, else ``$LAYERKNN_CACHE_DIR``, else ``~/.cache/layerknn``)
with one subfolder per kind of entry::

    activations/<fingerprint>.npz        pooled (L+1, n, d) values + token counts
    neighbours/<fingerprint>-k<K>.npz    (L+1, n, K) indices and scores
    links/<name key>.npz                 model name + texts + options -> fingerprint
    partial/<fingerprint>/               finished extraction batches of an interrupted run
    models/                              dequantised GGUF models (see layerknn.models)

Every entry goes through :mod:`layerknn.store` (atomic, checksummed) and is checked against
the request that reads it (fingerprint, n, layers, k): an entry that fails to load or does
not match is reported once with a warning, removed and recomputed.  A cache folder that
cannot be written (read-only, full) degrades to an uncached run with one warning.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from . import store

__all__ = ["Cache", "default_cache_dir", "CacheCorruptionWarning", "CacheUnavailableWarning"]

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SUBFOLDERS = ("activations", "neighbours", "links", "partial", "models", "texts")


class CacheCorruptionWarning(UserWarning):
    """A cache entry could not be read or does not match its request; it will be recomputed."""


class CacheUnavailableWarning(UserWarning):
    """The cache folder cannot be written; the run continues without caching."""


def default_cache_dir() -> Path:
    """``$LAYERKNN_CACHE_DIR`` if set, else ``~/.cache/layerknn``.

    Examples
    --------
    >>> isinstance(default_cache_dir(), Path)
    True
    """
    env = os.environ.get("LAYERKNN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "layerknn"


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"cache key must be [A-Za-z0-9_.-]+, got {key!r}")
    return key


class Cache:
    """Activations and neighbour lists on disk.

    Parameters
    ----------
    path : str or Path, optional
        Root folder (created on first write). Default :func:`default_cache_dir`.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> c = Cache(tempfile.mkdtemp())
    >>> c.get_neighbors("abc123", 3) is None
    True
    >>> idx = np.zeros((2, 4, 3), np.int32); sc = np.ones((2, 4, 3), np.float32)
    >>> c.put_neighbors("abc123", idx, sc, {"model_name": "m", "num_layers": 1})
    >>> hit = c.get_neighbors("abc123", 2)      # a k_max=3 entry serves k_max=2
    >>> hit["indices"].shape, hit["meta"]["model_name"]
    ((2, 4, 2), 'm')
    """

    def __init__(self, path: "str | os.PathLike | None" = None):
        self.path = Path(path).expanduser() if path is not None else default_cache_dir()
        self.writable = True

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"

    def folder(self, kind: str) -> Path:
        """The subfolder for one kind of entry (``activations``, ``neighbours``, ``models``...)."""
        if kind not in _SUBFOLDERS:
            raise ValueError(f"kind must be one of {_SUBFOLDERS}, got {kind!r}")
        return self.path / kind

    # ------------------------------------------------------------------ reading and writing
    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(f"layerknn cache entry {path} is unusable ({why}); recomputing it",
                      CacheCorruptionWarning, stacklevel=4)
        try:
            path.unlink()
        except OSError:
            pass

    def _read(self, path: Path, kind: str) -> tuple[dict, dict] | None:
        try:
            return store.read(path, kind=kind)
        except FileNotFoundError:
            return None
        except PermissionError:
            return None
        except store.FormatError as exc:
            self._discard(path, str(exc))
            return None

    def _write(self, path: Path, arrays: dict, meta: dict, kind: str) -> None:
        if not self.writable:
            return
        try:
            store.write(path, arrays, meta, kind=kind)
        except OSError as exc:
            self.writable = False
            warnings.warn(f"layerknn cache folder {self.path} cannot be written ({exc.strerror or exc}); "
                          "continuing without caching", CacheUnavailableWarning, stacklevel=4)

    # ------------------------------------------------------------------ neighbours
    def get_neighbors(self, fingerprint: str, k_max: int, *, n: int | None = None,
                      num_layers: int | None = None) -> dict | None:
        """Cached neighbours with at least ``k_max`` columns, cut to ``k_max``; else None.

        The entry must match the request: its fingerprint, and ``n`` / ``num_layers`` when
        given.  Returns a dict with ``indices`` int32 (L+1, n, k_max), ``scores`` float32 and
        ``meta``.
        """
        _check_key(fingerprint)
        folder = self.folder("neighbours")
        pattern = re.compile(rf"^{re.escape(fingerprint)}-k(\d+)\.npz$")
        try:
            entries = sorted((int(m.group(1)), e) for e in folder.iterdir() if (m := pattern.match(e.name)))
        except OSError:
            return None
        for stored_k, path in entries:
            if stored_k < k_max:
                continue
            found = self._read(path, "neighbours")
            if found is None:
                continue
            arrays, meta = found
            problem = _neighbour_mismatch(arrays, meta, fingerprint, stored_k, n, num_layers)
            if problem:
                self._discard(path, problem)
                continue
            return {"indices": arrays["indices"][..., :k_max], "scores": arrays["scores"][..., :k_max],
                    "meta": meta}
        return None

    def put_neighbors(self, fingerprint: str, indices: np.ndarray, scores: np.ndarray, meta: dict) -> None:
        """Store neighbour indices (int32) and scores (float32) of shape (L+1, n, k_max)."""
        indices = np.asarray(indices, dtype=np.int32)
        scores = np.asarray(scores, dtype=np.float32)
        k_max = indices.shape[-1]
        path = self.folder("neighbours") / f"{_check_key(fingerprint)}-k{k_max}.npz"
        self._write(path, {"indices": indices, "scores": scores},
                    dict(meta, fingerprint=fingerprint, k_max=k_max), "neighbours")

    # ------------------------------------------------------------------ activations
    def get_activations(self, fingerprint: str, *, n: int | None = None) -> dict | None:
        """Cached activations: dict with ``values`` float32 (L+1, n, d), extra arrays and ``meta``."""
        path = self.folder("activations") / f"{_check_key(fingerprint)}.npz"
        found = self._read(path, "activations")
        if found is None:
            return None
        arrays, meta = found
        values = arrays.get("values")
        problem = None
        if meta.get("fingerprint") != fingerprint:
            problem = f"fingerprint {meta.get('fingerprint')!r} differs from the request"
        elif values is None or values.ndim != 3 or values.dtype != np.float32:
            problem = "no float32 (layers, n, d) values"
        elif n is not None and values.shape[1] != n:
            problem = f"it holds n={values.shape[1]} prompts, the request has n={n}"
        elif meta.get("num_layers") != values.shape[0] - 1:
            problem = "its layer count disagrees with its values"
        if problem:
            self._discard(path, problem)
            return None
        return dict(arrays, meta=meta)

    def put_activations(self, fingerprint: str, values: np.ndarray, meta: dict,
                        extra: dict[str, np.ndarray] | None = None) -> None:
        """Store activations ``values`` (L+1, n, d) plus optional small arrays (e.g. token counts)."""
        arrays = {"values": np.asarray(values, dtype=np.float32)}
        arrays.update(extra or {})
        self._write(self.folder("activations") / f"{_check_key(fingerprint)}.npz", arrays,
                    dict(meta, fingerprint=fingerprint), "activations")

    def partial_folder(self, fingerprint: str) -> Path | None:
        """Where an extraction keeps its finished batches until it completes (None: not writable)."""
        if not self.writable:
            return None
        folder = self.folder("partial") / _check_key(fingerprint)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.writable = False
            warnings.warn(f"layerknn cache folder {self.path} cannot be written ({exc.strerror or exc}); "
                          "continuing without caching", CacheUnavailableWarning, stacklevel=2)
            return None
        return folder

    def drop_partial(self, fingerprint: str) -> None:
        """Remove an extraction's finished-batch folder once its activations are stored."""
        shutil.rmtree(self.folder("partial") / _check_key(fingerprint), ignore_errors=True)

    # ------------------------------------------------------------------ texts
    def get_texts(self, key: str) -> list[str] | None:
        """A list of texts stored by :meth:`put_texts` under ``key``, or None."""
        found = self._read(self.folder("texts") / f"{_check_key(key)}.npz", "texts")
        if found is None:
            return None
        arrays, _ = found
        data, lengths = arrays.get("utf8"), arrays.get("lengths")
        if data is None or lengths is None or int(lengths.sum()) != data.size:
            return None
        blob = data.tobytes()
        ends = np.cumsum(lengths).tolist()
        return [blob[a:b].decode("utf-8", "surrogatepass") for a, b in zip([0] + ends[:-1], ends)]

    def put_texts(self, key: str, texts: "list[str] | tuple[str, ...]") -> None:
        """Keep a list of texts (e.g. a builtin dataset that is slow to build) under ``key``."""
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        self._write(self.folder("texts") / f"{_check_key(key)}.npz",
                    {"utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
                     "lengths": np.array([len(e) for e in encoded], dtype=np.int64)}, {"count": len(encoded)}, "texts")

    # ------------------------------------------------------------------ name links
    def get_link(self, name_key: str) -> str | None:
        """The fingerprint last stored for a model-name key (see :meth:`put_link`), or None."""
        path = self.folder("links") / f"{_check_key(name_key)}.npz"
        found = self._read(path, "link")
        if found is None:
            return None
        fingerprint = found[1].get("fingerprint")
        if not isinstance(fingerprint, str) or not _KEY_RE.match(fingerprint):
            self._discard(path, "no valid fingerprint")
            return None
        return fingerprint

    def put_link(self, name_key: str, fingerprint: str) -> None:
        """Remember which extraction fingerprint a model name (+ texts and options) led to.

        Lets a rerun find cached neighbours without loading the model to fingerprint it.
        """
        self._write(self.folder("links") / f"{_check_key(name_key)}.npz", {},
                    {"fingerprint": _check_key(fingerprint)}, "link")

    def clear(self) -> int:
        """Delete every activation, neighbour, link, partial and texts entry; return how many were removed."""
        removed = 0
        for kind in ("activations", "neighbours", "links", "partial", "texts"):
            folder = self.folder(kind)
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
        return removed


def _neighbour_mismatch(arrays: dict, meta: dict, fingerprint: str, stored_k: int, n: int | None,
                        num_layers: int | None) -> str | None:
    """Why a neighbour entry cannot serve the request, or None when it can."""
    indices, scores = arrays.get("indices"), arrays.get("scores")
    if meta.get("fingerprint") != fingerprint:
        return f"fingerprint {meta.get('fingerprint')!r} differs from the request"
    if indices is None or scores is None or indices.ndim != 3 or indices.shape != scores.shape:
        return "indices/scores missing or of different shapes"
    if indices.dtype != np.int32 or scores.dtype != np.float32 or indices.shape[-1] != stored_k:
        return "unexpected dtypes or column count"
    if n is not None and indices.shape[1] != n:
        return f"it holds n={indices.shape[1]} prompts, the request has n={n}"
    if num_layers is not None and indices.shape[0] != num_layers + 1:
        return f"it holds {indices.shape[0]} layers, the request has {num_layers + 1}"
    if indices.size and (indices.min() < 0 or indices.max() >= indices.shape[1]):
        return "indices outside [0, n)"
    return None
