"""Resumable extraction: every finished batch of pooled values is kept as one small file.

With ``extract(..., resume_dir=...)`` each batch writes ``batch-<run>-<start>-<end>.npz``
into the directory as soon as it finishes (through :mod:`layerknn.store`: a temporary name,
fsync, ``os.replace``, a kind tag and a checksum). ``<run>`` is a digest of the extraction fingerprint (model,
tokenizer, texts, pooling, layers, ...) and of the options that change the batch plan or the
stored numbers (batch size, output dtype, device type); ``<start>-<end>`` are the batch's
positions in the length-sorted order, which a rerun plans identically. Each file holds the
batch's row indices, pooled values of every requested layer, token counts and truncation
flags, the rest of the batch plan at that point and the planner's limits (so a resumed run
replays the same schedule, out-of-memory back-offs included) and the full run digest.
A rerun loads a file only when all of that agrees with what it would compute; otherwise the
file is named in a warning, deleted and its batch recomputed. Files of other runs (another
``<run>``) are left alone. ``remove_resume_files`` clears the directory once the result is
safe elsewhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from . import store
from .cache import CacheCorruptionWarning

_FORMAT = "layerknn-extract-batch"
_VERSION = 1
_KIND = "extraction-batch"
_NAME_RE = re.compile(r"^batch-([0-9a-f]{16})-(\d{9})-(\d{9})\.npz$")
_TEMP_RE = re.compile(r"^\.batch-[0-9a-f]{16}-\d{9}-\d{9}\.npz\..*\.tmp$")


def run_digest(fingerprint: str, *, out_dtype: torch.dtype, batch_size, device_type: str) -> str:
    """Digest of everything that decides a batch file's name and contents."""
    payload = {"format": _FORMAT, "version": _VERSION, "fingerprint": fingerprint, "out_dtype": str(out_dtype),
               "batch_size": batch_size, "device_type": device_type}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _storage_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """The dtype a batch is stored in: ``out_dtype`` when NumPy has it, else float32 (exact for bfloat16)."""
    try:
        torch.empty(0, dtype=out_dtype).numpy()
    except TypeError:
        return torch.float32
    return out_dtype


def check_resume_dir(resume_dir) -> Path | None:
    """``resume_dir`` as a Path (created if missing), or None; TypeError/ValueError if unusable."""
    if resume_dir is None:
        return None
    if not isinstance(resume_dir, (str, Path)) and not hasattr(resume_dir, "__fspath__"):
        raise TypeError(f"resume_dir must be a directory path or None, got {type(resume_dir).__name__}")
    path = Path(resume_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"resume_dir must be a directory, but {str(path)!r} is a file")
    path.mkdir(parents=True, exist_ok=True)
    return path


class ResumeDir:
    """The batch files of one extraction run in ``path`` (see the module docstring)."""

    def __init__(self, path: Path, digest: str, out_dtype: torch.dtype):
        self.path = path
        self.digest = digest
        self.storage = _storage_dtype(out_dtype)
        self.out_dtype = out_dtype
        self._ends: dict = {}  # start -> set of ends with a file on disk
        for entry in path.iterdir():
            match = _NAME_RE.match(entry.name)
            if match and match.group(1) == digest[:16]:
                self._ends.setdefault(int(match.group(2)), set()).add(int(match.group(3)))

    def _file(self, start: int, end: int) -> Path:
        return self.path / f"batch-{self.digest[:16]}-{start:09d}-{end:09d}.npz"

    def ends_at(self, start: int) -> list:
        """Ends of the stored batches that begin at position ``start`` (largest first)."""
        return sorted(self._ends.get(start, ()), reverse=True)

    def save(self, start: int, end: int, rows, values: torch.Tensor, token_counts, truncated, next_ends,
             limits) -> None:
        """Store the finished batch ``[start, end)``: ``values`` is the (S, n, d) buffer, ``rows`` its row ids.

        ``next_ends`` are the planned ends of the batches after it, ``limits`` the planner's limits.
        """
        rows = np.asarray(rows, dtype=np.int64)
        index = torch.from_numpy(rows).to(values.device)
        arrays = {
            "rows": rows,
            "values": values.index_select(1, index).to(self.storage).cpu().numpy(),
            "token_counts": np.asarray(token_counts, dtype=np.int64),
            "truncated": np.asarray(truncated, dtype=bool),
            "next_ends": np.asarray(next_ends, dtype=np.int64),
            "limits": np.asarray(limits, dtype=np.int64),
        }
        store.write(self._file(start, end), arrays, {"run": self.digest, "start": start, "end": end}, kind=_KIND)
        self._ends.setdefault(start, set()).add(end)

    def load(self, start: int, end: int, rows, token_counts, truncated, shape, n: int):
        """``(values, next_ends, limits)`` of the stored batch ``[start, end)``, or None (warned, deleted).

        ``values`` (S, B, d) come in ``out_dtype``. ``rows``, ``token_counts`` and ``truncated`` are
        what this run computed for the batch; the file must agree with them, with the run digest,
        the shape, a plan that ends at ``n`` and its own checksum.
        """
        path = self._file(start, end)
        try:
            arrays, meta = store.read(path, kind=_KIND)
            problem = self._problem(meta, arrays, start, end, rows, token_counts, truncated, shape, n)
        except (OSError, store.FormatError) as error:
            problem = f"unreadable ({type(error).__name__}: {error})"
        if problem is None:
            values = torch.from_numpy(arrays["values"]).to(self.out_dtype)
            return values, [int(e) for e in arrays["next_ends"]], tuple(int(v) for v in arrays["limits"])
        warnings.warn(f"layerknn resume file {path} is {problem}; deleting it and recomputing its batch",
                      CacheCorruptionWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        self._ends.get(start, set()).discard(end)
        return None

    def _problem(self, meta, arrays, start, end, rows, token_counts, truncated, shape, n) -> str | None:
        if meta.get("run") != self.digest or (meta.get("start"), meta.get("end")) != (start, end):
            return "from another extraction (its fingerprint or options differ)"
        if set(arrays) != {"rows", "values", "token_counts", "truncated", "next_ends", "limits"}:
            return "missing arrays"
        expected_dtype = torch.empty(0, dtype=self.storage).numpy().dtype
        if arrays["values"].shape != tuple(shape) or arrays["values"].dtype != expected_dtype:
            return f"of the wrong shape {arrays['values'].shape} / dtype {arrays['values'].dtype}"
        if not (np.array_equal(arrays["rows"], np.asarray(rows))
                and np.array_equal(arrays["token_counts"], np.asarray(token_counts))
                and np.array_equal(arrays["truncated"], np.asarray(truncated, dtype=bool))):
            return "for other rows or tokens than this run's batch"
        plan = [end, *arrays["next_ends"].tolist()]
        limits = arrays["limits"].tolist()
        increasing = all(b > a for a, b in itertools.pairwise(plan))
        if plan[-1] != n or not increasing or len(limits) != 2 or limits[0] < 1 or limits[1] < 0:
            return "holding an invalid batch plan"
        return None


def remove_resume_files(resume_dir) -> int:
    """Delete every batch file (and leftover temporary file) in ``resume_dir``; return how many.

    The directory itself is removed when nothing else is left in it.

    Examples
    --------
    >>> import tempfile
    >>> from layerknn.extract import remove_resume_files
    >>> remove_resume_files(tempfile.mkdtemp())
    0
    """
    path = Path(resume_dir).expanduser()
    if not path.is_dir():
        return 0
    removed = 0
    for entry in path.iterdir():
        if entry.is_file() and (_NAME_RE.match(entry.name) or _TEMP_RE.match(entry.name)):
            entry.unlink(missing_ok=True)
            removed += 1
    try:
        path.rmdir()
    except OSError:
        pass  # not empty: other files are not ours to delete
    return removed
