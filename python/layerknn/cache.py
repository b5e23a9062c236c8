"""The on-disk cache: activations and neighbour lists keyed by the extraction fingerprint.

One root (the ``path`` argument, else ``$LAYERKNN_CACHE_DIR``, else ``~/.cache/layerknn``)
with one subfolder per kind of entry::

    activations/<fingerprint>.npz        pooled (L+1, n, d) values + token counts
    neighbours/<fingerprint>-k<K>.npz    (L+1, n, K) indices and scores
    links/<name key>.npz                 model name + texts + options -> fingerprint
    partial/<fingerprint>/               finished extraction batches of an interrupted run
    models/                              dequantised GGUF models (see layerknn.models)

The root may be a folder or an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://`` ...
with the backend installed), so a cluster's workers can share one content-addressed store.
Under a URL that is not a ``file://`` folder, extraction batches are not kept (an interrupted
extraction restarts its model) and dequantised models go to the local default root.

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

__all__ = ["Cache", "default_cache_dir", "local_cache_dir", "CacheCorruptionWarning", "CacheUnavailableWarning"]

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SUBFOLDERS = ("activations", "neighbours", "links", "partial", "models", "texts")


class CacheCorruptionWarning(UserWarning):
    """A cache entry could not be read or does not match its request; it will be recomputed."""


class CacheUnavailableWarning(UserWarning):
    """The cache folder cannot be written; the run continues without caching."""


def default_cache_dir() -> "Path | str":
    """``$LAYERKNN_CACHE_DIR`` if set (a folder, or an fsspec URL returned as a string), else ``~/.cache/layerknn``.

    Examples
    --------
    >>> isinstance(default_cache_dir(), (Path, str))
    True
    """
    env = os.environ.get("LAYERKNN_CACHE_DIR")
    if env and store.is_url(env):
        return env.rstrip("/")
    return Path(env).expanduser() if env else _home_root()


def _home_root() -> Path:
    return Path.home() / ".cache" / "layerknn"


def local_cache_dir() -> Path:
    """The cache root as a folder on this machine, for what needs real files (dequantised models).

    The root itself, the folder of a ``file://`` URL root, else (an object store, ``memory://``)
    ``~/.cache/layerknn``.

    Examples
    --------
    >>> isinstance(local_cache_dir(), Path)
    True
    """
    root = default_cache_dir()
    return root if isinstance(root, Path) else (store.local_path(root) or _home_root())


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"cache key must be [A-Za-z0-9_.-]+, got {key!r}")
    return key


class Cache:
    """Activations and neighbour lists on disk.

    Parameters
    ----------
    path : str or Path, optional
        Root folder (created on first write) or fsspec URL such as ``"s3://bucket/layerknn"``
        (ValueError for an unknown protocol, ImportError naming the package of a missing
        backend).  Default :func:`default_cache_dir`.

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
        root = path if path is not None else default_cache_dir()
        if store.is_url(root):
            store.filesystem(root)  # an unknown protocol or a missing backend fails here, before any work
            self.path: "Path | str" = root.rstrip("/")
            self._local = store.local_path(self.path)  # a file:// root is a folder: batches can be kept
        else:
            self.path = Path(root).expanduser()
            self._local = self.path
        self.writable = True

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"

    def folder(self, kind: str) -> "Path | str":
        """The subfolder for one kind of entry (``activations``, ``neighbours``...); a URL under a URL root."""
        if kind not in _SUBFOLDERS:
            raise ValueError(f"kind must be one of {_SUBFOLDERS}, got {kind!r}")
        return self.path / kind if isinstance(self.path, Path) else f"{self.path}/{kind}"

    @staticmethod
    def _join(folder: "Path | str", name: str) -> "Path | str":
        return folder / name if isinstance(folder, Path) else f"{folder}/{name}"

    @staticmethod
    def _names(folder: "Path | str") -> list[str]:
        """Names of the entries in a folder (OSError, e.g. FileNotFoundError, when it cannot be listed)."""
        if isinstance(folder, Path):
            return [entry.name for entry in folder.iterdir()]
        fs, key = store.filesystem(folder)
        return [entry.rstrip("/").rpartition("/")[2] for entry in fs.ls(key, detail=False)]

    @staticmethod
    def _remove(location: "Path | str", recursive: bool = False) -> None:
        if isinstance(location, Path):
            if recursive and location.is_dir():
                shutil.rmtree(location, ignore_errors=True)
            else:
                location.unlink()
            return
        fs, key = store.filesystem(location)
        fs.rm(key, recursive=recursive)

    # ------------------------------------------------------------------ reading and writing
    def _discard(self, path: "Path | str", why: str) -> None:
        warnings.warn(f"layerknn cache entry {path} is unusable ({why}); recomputing it",
                      CacheCorruptionWarning, stacklevel=4)
        try:
            self._remove(path)
        except OSError:
            pass

    def _read(self, path: "Path | str", kind: str) -> tuple[dict, dict] | None:
        try:
            return store.read(path, kind=kind)
        except FileNotFoundError:
            return None
        except PermissionError:
            return None
        except store.FormatError as exc:
            self._discard(path, str(exc))
            return None

    def _write(self, path: "Path | str", arrays: dict, meta: dict, kind: str) -> None:
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
            entries = sorted((int(m.group(1)), self._join(folder, name)) for name in self._names(folder)
                             if (m := pattern.match(name)))
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
        path = self._join(self.folder("neighbours"), f"{_check_key(fingerprint)}-k{k_max}.npz")
        self._write(path, {"indices": indices, "scores": scores},
                    dict(meta, fingerprint=fingerprint, k_max=k_max), "neighbours")

    # ------------------------------------------------------------------ activations
    def get_activations(self, fingerprint: str, *, n: int | None = None) -> dict | None:
        """Cached activations: dict with ``values`` float32 (L+1, n, d), extra arrays and ``meta``."""
        path = self._join(self.folder("activations"), f"{_check_key(fingerprint)}.npz")
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
        self._write(self._join(self.folder("activations"), f"{_check_key(fingerprint)}.npz"), arrays,
                    dict(meta, fingerprint=fingerprint), "activations")

    def partial_folder(self, fingerprint: str) -> Path | None:
        """Where an extraction keeps its finished batches until it completes (None: not writable, or no folder)."""
        if not self.writable or self._local is None:
            return None
        folder = self._local / "partial" / _check_key(fingerprint)
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
        if self._local is not None:
            shutil.rmtree(self._local / "partial" / _check_key(fingerprint), ignore_errors=True)

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
        path = self._join(self.folder("links"), f"{_check_key(name_key)}.npz")
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
        self._write(self._join(self.folder("links"), f"{_check_key(name_key)}.npz"), {},
                    {"fingerprint": _check_key(fingerprint)}, "link")

    def clear(self) -> int:
        """Delete every activation, neighbour, link, partial and texts entry; return how many were removed."""
        removed = 0
        for kind in ("activations", "neighbours", "links", "partial", "texts"):
            folder = self.folder(kind)
            try:
                names = self._names(folder)
            except OSError:
                continue
            for name in names:
                self._remove(self._join(folder, name), recursive=True)
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
