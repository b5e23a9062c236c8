"""The one on-disk format: every file layerknn writes, and the output folders it swaps in.

A layerknn file is an ``.npz`` archive (or ``.safetensors``) of plain NumPy arrays plus one
header: a JSON string that names the format, the *kind* of content (``"comparison"``,
``"zoo"``, ``"activations"``, ``"neighbours"``, ...), the format version, a SHA-256 of every
array (name, dtype, shape and bytes) and the kind's own metadata.  Files are written to a
temporary name, flushed to disk and moved into place, so a reader sees the old file or the
new one, never half of one.  Reading never unpickles; anything wrong (missing, truncated,
foreign, another kind, a newer version, a checksum mismatch) raises :class:`FormatError`,
which names the file.

A location may also be an fsspec URL (``memory://``, ``file://``, ``s3://``, ``gs://`` ... when
the matching fsspec backend is installed): the file is written under a temporary key and then
moved onto its key, and reading checks the same checksum, so an object cut short by a dying
writer (on stores where a move is a copy) is never trusted: it raises :class:`FormatError`.

Output folders (figures, reports) are built in a temporary sibling folder and swapped in
whole (:func:`output_folder`), so an interrupted run leaves the previous complete set.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["FormatError", "write", "read", "checksum", "output_folder", "check_output_folder", "MANIFEST",
           "is_url", "filesystem", "local_path"]

VERSION = 1
_HEADER = "__layerknn__"
_SUFFIXES = (".npz", ".safetensors")
#: The file that marks a folder as one layerknn wrote (and so one it may replace).
MANIFEST = "manifest.json"
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


class FormatError(ValueError):
    """A file is missing, damaged, foreign or of another kind; the message names the file."""


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes (in name order).

    Examples
    --------
    >>> a = checksum({"x": np.zeros(3, np.float32)})
    >>> a == checksum({"x": np.zeros(3, np.float32)}), a == checksum({"x": np.zeros(3, np.float64)})
    (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        digest.update(arr.view(np.uint8).reshape(-1).data if arr.size else b"")
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _suffix(path: "Path | str") -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"path must end in .npz or .safetensors, got {str(path)!r}")
    return suffix


def write(path: "str | os.PathLike", arrays: dict[str, np.ndarray], meta: dict, *, kind: str) -> "Path | str":
    """Write ``arrays`` and ``meta`` (JSON-serialisable) to ``path`` (or a URL) atomically; returns it.

    Examples
    --------
    >>> import tempfile, os
    >>> p = write(os.path.join(tempfile.mkdtemp(), "x.npz"), {"a": np.arange(3)}, {"note": "hi"}, kind="demo")
    >>> arrays, meta = read(p, kind="demo")
    >>> arrays["a"].tolist(), meta["note"]
    ([0, 1, 2], 'hi')
    """
    if is_url(path):
        return _write_url(str(path), arrays, meta, kind)
    path = Path(path)
    suffix = _suffix(path)
    arrays, header = _encode(arrays, meta, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _dump(handle, arrays, header, suffix)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _encode(arrays: dict[str, np.ndarray], meta: dict, kind: str) -> tuple[dict[str, np.ndarray], str]:
    """The arrays made contiguous and the JSON header that names the format, kind, version and checksum."""
    arrays = {str(name): np.ascontiguousarray(value) for name, value in arrays.items()}
    if _HEADER in arrays:
        raise ValueError(f"array name {_HEADER!r} is reserved")
    header = json.dumps({"format": "layerknn", "kind": kind, "version": VERSION,
                         "sha256": checksum(arrays), "meta": meta}, allow_nan=False)
    return arrays, header


def _dump(handle: Any, arrays: dict[str, np.ndarray], header: str, suffix: str) -> None:
    if suffix == ".npz":
        np.savez(handle, **{_HEADER: np.array(header)}, **arrays)
    else:
        from safetensors.numpy import save

        handle.write(save(arrays, metadata={_HEADER: header}))


def _load_npz(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    with open(path, "rb") as handle:  # our handle: closed even when numpy fails half-way
        return _parse_npz(handle, str(path))


def _parse_npz(handle: Any, name: str) -> tuple[str, dict[str, np.ndarray]]:
    if handle.read(2) != b"PK":
        raise FormatError(f"{name!r} is not a layerknn file (not an .npz archive)")
    handle.seek(0)
    with np.load(handle, allow_pickle=False) as data:
        if _HEADER not in data.files:
            raise FormatError(f"{name!r} is not a layerknn file (no {_HEADER} header; "
                              f"it holds {sorted(data.files)[:6]})")
        header = str(data[_HEADER])
        arrays = {key: data[key] for key in data.files if key != _HEADER}
    return header, arrays


def _parse_safetensors(data: bytes, name: str) -> tuple[str, dict[str, np.ndarray]]:
    """A safetensors file held in memory: its header's metadata, then its arrays."""
    from safetensors.numpy import load

    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
    if _HEADER not in metadata:
        raise FormatError(f"{name!r} is not a layerknn file (no {_HEADER} header)")
    return metadata[_HEADER], load(data)


def _load_safetensors(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if _HEADER not in metadata:
            raise FormatError(f"{str(path)!r} is not a layerknn file (no {_HEADER} header)")
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    return metadata[_HEADER], arrays


def read(path: "str | os.PathLike", *, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by :func:`write`; returns ``(arrays, meta)``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FormatError
        The file is truncated, corrupt, foreign, of another kind or version, or fails its checksum.
    """
    if is_url(path):
        return _read_url(str(path), kind)
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"no layerknn {kind} file at {str(path)!r}")
    return _decode(lambda: _load_npz(path) if suffix == ".npz" else _load_safetensors(path), str(path), kind)


def _decode(load: Any, name: str, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``load() -> (header, arrays)`` and check the header and checksum; FormatError naming ``name``."""
    try:
        header, arrays = load()
        info = json.loads(header)
    except FormatError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise FormatError(f"{name!r} is not a readable layerknn file "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - a reader library failing on garbage: still "damaged"
        raise FormatError(f"{name!r} is damaged ({type(exc).__name__})") from None
    if not isinstance(info, dict) or info.get("format") != "layerknn":
        raise FormatError(f"{name!r} is not a layerknn file (foreign header)")
    if info.get("kind") != kind:
        raise FormatError(f"{name!r} holds a layerknn {info.get('kind')!r} file, expected {kind!r}")
    if info.get("version") != VERSION:
        raise FormatError(f"{name!r} has format version {info.get('version')!r}; this layerknn reads "
                          f"version {VERSION} (upgrade layerknn, or recompute the file)")
    if info.get("sha256") != checksum(arrays):
        raise FormatError(f"{name!r} is corrupt: its arrays do not match the stored checksum")
    meta = info.get("meta")
    if not isinstance(meta, dict):
        raise FormatError(f"{name!r} is corrupt: its metadata is not a JSON object")
    return arrays, meta


# ------------------------------------------------------------------------------------------
# fsspec URLs


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL string such as ``"s3://bucket/x"`` (a Path never is).

    Examples
    --------
    >>> is_url("memory://cache"), is_url("/tmp/cache"), is_url(Path("/tmp"))
    (True, False, False)
    """
    return isinstance(location, str) and bool(_URL_RE.match(location))


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URL; a clear error for an unknown or missing backend.

    Raises ValueError naming an unknown protocol, ImportError naming the package to install
    for a known protocol whose backend is missing.
    """
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError as exc:
        raise ImportError(f"the location {url!r} is a URL, which needs fsspec; run: pip install fsspec") from exc
    if protocol not in fsspec.available_protocols():
        raise ValueError(f"the location {url!r} uses the unknown protocol {protocol!r}; expected a path or an "
                         "fsspec URL such as file://, memory://, s3:// or gs://")
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = known_implementations.get(protocol, {}).get("class", protocol).split(".")[0]
        raise ImportError(f"the location {url!r} uses protocol {protocol!r}, whose fsspec backend is not "
                          f"installed; run: pip install {package}") from exc


def local_path(url: str) -> Path | None:
    """The local folder a ``file://`` URL names; None for any other URL (an object store, ``memory://``)."""
    fs, key = filesystem(url)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return Path(key) if "file" in protocols else None


def _write_url(url: str, arrays: dict[str, np.ndarray], meta: dict, kind: str) -> str:
    """Write under a temporary key, then move it onto ``url``; a failed write removes its temporary key."""
    suffix = _suffix(url)
    fs, key = filesystem(url)
    arrays, header = _encode(arrays, meta, kind)
    parent, _, name = key.rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as handle:
            _dump(handle, arrays, header, suffix)
        fs.mv(tmp, key)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    return url


def _read_url(url: str, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    suffix = _suffix(url)
    fs, key = filesystem(url)
    try:
        data = fs.cat_file(key)
    except FileNotFoundError:
        raise FileNotFoundError(f"no layerknn {kind} file at {url!r}") from None
    if suffix == ".npz":
        return _decode(lambda: _parse_npz(io.BytesIO(data), url), url, kind)
    return _decode(lambda: _parse_safetensors(data, url), url, kind)


# ------------------------------------------------------------------------------------------
# output folders


def check_output_folder(path: "str | os.PathLike") -> Path:
    """Raise ValueError unless ``path`` is new, empty, or a folder layerknn wrote before.

    Run before any work, so a bad ``--out`` fails in the first second, not after the job.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {str(path)!r} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise ValueError(f"output folder {str(path)!r} already holds files that layerknn did not write "
                         f"(no {MANIFEST}); give a new or empty folder")
    parent = path.resolve().parent
    if not os.access(parent if parent.exists() else Path.cwd(), os.W_OK):
        raise ValueError(f"output folder {str(path)!r}: cannot write in {str(parent)!r}")
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE) where the OS offers it."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def output_folder(path: "str | os.PathLike", manifest: dict | None = None) -> Iterator[Path]:
    """Build an output folder in a temporary sibling and swap it in only when the block succeeds.

    Inside the ``with`` block write every file into the yielded folder; on success a
    :data:`MANIFEST` listing the files is written last and the folder replaces ``path``
    (atomically where the OS can exchange two paths).  On any exception, including
    KeyboardInterrupt, the temporary folder is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "out")
    >>> with output_folder(out) as tmp:
    ...     _ = (tmp / "a.txt").write_text("new")
    >>> sorted(os.listdir(out))
    ['a.txt', 'manifest.json']
    """
    path = Path(path)
    check_output_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        yield staging
        files = sorted(p.name for p in staging.iterdir())
        body = {"layerknn": True, "files": files, **(manifest or {})}
        (staging / MANIFEST).write_text(json.dumps(body, indent=1, default=str) + "\n")
        os.chmod(staging, 0o777 & ~_umask())
        if path.exists() and _exchange(staging, path):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old set
        elif path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, retired / "old")
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
