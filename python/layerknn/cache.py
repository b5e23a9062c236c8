"""On-disk cache of activations and neighbour sets, keyed by the extraction fingerprint.

Each entry is one ``.npz`` file (no pickles) holding its arrays plus a ``meta`` JSON
string with a SHA-256 of every array's bytes.  Files are written to a temporary name and
moved into place with :func:`os.replace`, so an interrupted run leaves either the old
entry or none.  A file that fails to load or whose checksum disagrees is reported with a
warning, deleted and treated as a miss, so it gets recomputed rather than trusted.

Location: the ``path`` argument, else ``$LAYERKNN_CACHE_DIR``, else ``~/.cache/layerknn``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["Cache", "default_cache_dir", "CacheCorruptionWarning"]

_FORMAT = 1
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class CacheCorruptionWarning(UserWarning):
    """A cache file could not be read or failed its checksum; it will be recomputed."""


def default_cache_dir() -> Path:
    """``$LAYERKNN_CACHE_DIR`` if set, else ``~/.cache/layerknn``.

    Examples
    --------
    >>> isinstance(default_cache_dir(), Path)
    True
    """
    env = os.environ.get("LAYERKNN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "layerknn"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and a JSON ``meta`` string into ``path`` via a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Cache:
    """Activations and neighbour sets on disk.

    Parameters
    ----------
    path : str or Path, optional
        Directory (created on first write). Default :func:`default_cache_dir`.

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

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"

    # ------------------------------------------------------------------ generic entries
    def _file(self, kind: str, key: str, suffix: str = "") -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"cache key must be [A-Za-z0-9_.-]+, got {key!r}")
        return self.path / f"{kind}-{key}{suffix}.npz"

    def _read(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {_FORMAT}")
            if meta.get("sha256") != _digest(arrays):
                raise ValueError("checksum mismatch")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            warnings.warn(
                f"layerknn cache file {path} is corrupt or truncated ({exc}); recomputing it",
                CacheCorruptionWarning, stacklevel=3,
            )
            try:
                path.unlink()
            except OSError:
                pass
            return None
        arrays["meta"] = meta
        return arrays

    def _write(self, path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
        arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        meta = dict(meta, format=_FORMAT, sha256=_digest(arrays))
        write_npz_atomic(path, arrays, meta)

    # ------------------------------------------------------------------ neighbours
    def get_neighbors(self, fingerprint: str, k_max: int) -> dict | None:
        """Cached neighbours with at least ``k_max`` columns, cut to ``k_max``; else None.

        Returns a dict with ``indices`` int32 (L+1, n, k_max), ``scores`` float32 and ``meta``.
        """
        candidates = []
        if self.path.is_dir():
            pattern = re.compile(rf"^nbrs-{re.escape(fingerprint)}-k(\d+)\.npz$")
            for entry in self.path.iterdir():
                m = pattern.match(entry.name)
                if m and int(m.group(1)) >= k_max:
                    candidates.append((int(m.group(1)), entry))
        for _, path in sorted(candidates):
            hit = self._read(path)
            if hit is not None:
                hit["indices"] = hit["indices"][..., :k_max]
                hit["scores"] = hit["scores"][..., :k_max]
                return hit
        return None

    def put_neighbors(self, fingerprint: str, indices: np.ndarray, scores: np.ndarray, meta: dict) -> None:
        """Store neighbour indices (int32) and scores (float32) of shape (L+1, n, k_max)."""
        indices = np.asarray(indices, dtype=np.int32)
        scores = np.asarray(scores, dtype=np.float32)
        k_max = indices.shape[-1]
        self._write(self._file("nbrs", fingerprint, f"-k{k_max}"),
                    {"indices": indices, "scores": scores}, dict(meta, k_max=k_max))

    # ------------------------------------------------------------------ activations
    def get_activations(self, fingerprint: str) -> dict | None:
        """Cached activations: dict with ``values`` float32 (L+1, n, d), extra arrays and ``meta``."""
        return self._read(self._file("acts", fingerprint))

    def put_activations(self, fingerprint: str, values: np.ndarray, meta: dict,
                        extra: dict[str, np.ndarray] | None = None) -> None:
        """Store activations ``values`` (L+1, n, d) plus optional small arrays (e.g. token counts)."""
        arrays = {"values": np.asarray(values)}
        arrays.update(extra or {})
        self._write(self._file("acts", fingerprint), arrays, meta)

    # ------------------------------------------------------------------ name links
    def get_link(self, name_key: str) -> str | None:
        """The fingerprint last stored for a model-name key (see ``put_link``), or None."""
        path = self.path / f"link-{name_key}.json"
        if not _KEY_RE.match(name_key) or not path.is_file():
            return None
        try:
            fingerprint = json.loads(path.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            warnings.warn(f"layerknn cache file {path} is corrupt; ignoring it", CacheCorruptionWarning, stacklevel=2)
            return None
        return fingerprint if isinstance(fingerprint, str) and _KEY_RE.match(fingerprint) else None

    def put_link(self, name_key: str, fingerprint: str) -> None:
        """Remember which extraction fingerprint a model name (+ texts and options) led to.

        Lets a rerun find cached neighbours without loading the model to fingerprint it.
        """
        if not _KEY_RE.match(name_key):
            raise ValueError(f"cache key must be [A-Za-z0-9_.-]+, got {name_key!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".link-{name_key}.", suffix=".tmp", dir=self.path)
        with os.fdopen(fd, "w") as fh:
            json.dump({"fingerprint": fingerprint}, fh)
        os.replace(tmp, self.path / f"link-{name_key}.json")

    def clear(self) -> int:
        """Delete every cache file; return how many were removed."""
        removed = 0
        if self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.suffix in (".npz", ".tmp", ".json") and \
                        entry.name.startswith(("acts-", "nbrs-", "link-", ".acts-", ".nbrs-", ".link-")):
                    entry.unlink()
                    removed += 1
        return removed
