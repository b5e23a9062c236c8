"""Prompt sets named by a short spec string, built offline and deterministically.

A comparison needs the same list of texts for every model.  ``load_texts`` turns a
spec such as ``"builtin:stdlib-docs?n=1024&seed=0"`` or ``"prompts.jsonl?field=text"``
into that list.  Nothing is downloaded: the built-in sets are generated (random
strings) or harvested from the docstrings of the local Python standard library,
read with :mod:`ast` (no module is imported).

Spec syntax
-----------
``SOURCE[?key=value&key=value...]`` where SOURCE is

* ``builtin:random-strings`` -- seeded random strings over letters, digits and
  ``" .,!?"`` (the control set); options ``n`` (default 1024), ``seed`` (default 0),
  ``length`` (characters per string, default 100);
* ``builtin:stdlib-docs`` -- English prose paragraphs from standard-library
  docstrings (deduplicated, sorted-file order); options ``n``, ``seed``;
* a path ending in ``.txt`` (one prompt per non-empty line), ``.jsonl`` (option
  ``field``, default ``text``) or ``.csv`` (option ``column``, default ``text``);
  options ``n``, ``seed``. Files must be UTF-8 (a leading byte-order mark is dropped);
  anything else raises ValueError naming the file and the format expected;
* ``hf:<hub id>[/<config>]`` -- one column of one split of a Hugging Face dataset, through
  the ``datasets`` library (``pip install 'layerknn[hf]'``); options ``split`` (default
  ``train``), ``field`` (default ``text``), ``config``, ``n``, ``seed``. The hub id may be
  ``owner/name``, so ``hf:Salesforce/wikitext/wikitext-2-raw-v1`` names a config (or use
  ``?config=``). ``hf:/path/to/folder`` reads a dataset saved with ``save_to_disk``. Blank
  values are dropped; offline (``HF_DATASETS_OFFLINE=1``) only cached datasets load, and
  anything else raises ValueError naming the dataset.

``n`` keeps a seeded random subset of ``n`` items (seed 0 unless ``seed`` is given),
in their original order; without ``n`` every item is kept.
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import inspect
import io
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

__all__ = ["BUILTINS", "RANDOM_ALPHABET", "DatasetSpec", "load_texts", "parse_spec"]

#: Characters of the random-string control set (letters, digits and `` .,!?``).
RANDOM_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?"
)
BUILTINS = ("random-strings", "stdlib-docs")
_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
_KNOWN_OPTIONS = {
    "random-strings": {"n", "seed", "length"},
    "stdlib-docs": {"n", "seed"},
    ".txt": {"n", "seed"},
    ".jsonl": {"n", "seed", "field"},
    ".csv": {"n", "seed", "column"},
    "hf": {"n", "seed", "split", "field", "config"},
}
_INT_OPTIONS = ("n", "seed", "length")
_DEFAULT_RANDOM_N = 1024


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec: the source and its options.

    Attributes
    ----------
    source : str
        ``"builtin:<name>"`` or a file path.
    options : dict
        Parsed options (``n``, ``seed``, ``length`` as int; ``field``/``column`` as str).
    """

    source: str
    options: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``"random-strings"``, ``"stdlib-docs"``, ``".txt"``, ``".jsonl"``, ``".csv"`` or ``"hf"``."""
        if self.source.startswith("hf:"):
            return "hf"
        if self.source.startswith("builtin:"):
            return self.source[len("builtin:"):]
        return Path(self.source).suffix.lower()

    def with_options(self, **options) -> DatasetSpec:
        """Return a copy with some options replaced (``None`` values are ignored)."""
        merged = dict(self.options)
        merged.update({k: v for k, v in options.items() if v is not None})
        return DatasetSpec(self.source, merged)

    def __str__(self) -> str:
        if not self.options:
            return self.source
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.source}?{query}"


def parse_spec(spec: str | DatasetSpec) -> DatasetSpec:
    """Parse a dataset spec string.

    Parameters
    ----------
    spec : str or DatasetSpec
        E.g. ``"builtin:stdlib-docs?n=1024&seed=0"`` or ``"data.jsonl?field=text&n=500"``.

    Returns
    -------
    DatasetSpec

    Raises
    ------
    ValueError
        Unknown builtin, unsupported file type, unknown or malformed option.

    Examples
    --------
    >>> s = parse_spec("builtin:random-strings?n=8&seed=3")
    >>> s.kind, s.options["n"], s.options["seed"]
    ('random-strings', 8, 3)
    >>> str(s)
    'builtin:random-strings?n=8&seed=3'
    """
    if isinstance(spec, DatasetSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
    source, _, query = spec.strip().partition("?")
    if source.startswith("builtin:"):
        name = source[len("builtin:"):]
        if name not in BUILTINS:
            raise ValueError(
                f"unknown builtin dataset {name!r} in spec {spec!r}; "
                f"expected one of {', '.join('builtin:' + b for b in BUILTINS)}"
            )
        kind = name
    elif source.startswith("hf:"):
        from ._hf_datasets import split_name

        if not source[len("hf:"):]:
            raise ValueError(f"dataset spec {spec!r}: expected a dataset after 'hf:', e.g. 'hf:Salesforce/wikitext'")
        split_name(source[len("hf:"):])  # ValueError on a malformed name, before anything is loaded
        kind = "hf"
    else:
        kind = Path(source).suffix.lower()
        if kind not in _FILE_SUFFIXES:
            raise ValueError(
                f"dataset spec {spec!r}: expected 'builtin:random-strings', "
                f"'builtin:stdlib-docs', 'hf:<dataset>' or a path ending in .txt, .jsonl or .csv"
            )
    options: dict = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise ValueError(f"dataset spec {spec!r}: malformed options {query!r}") from exc
        for key, value in pairs:
            if key not in _KNOWN_OPTIONS[kind]:
                raise ValueError(
                    f"dataset spec {spec!r}: unknown option {key!r} for {kind} "
                    f"(allowed: {', '.join(sorted(_KNOWN_OPTIONS[kind]))})"
                )
            if key in _INT_OPTIONS:
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(
                        f"dataset spec {spec!r}: option {key!r} must be an integer, got {value!r}"
                    ) from None
                if key in ("n", "length") and value < 1:
                    raise ValueError(f"dataset spec {spec!r}: option {key!r} must be >= 1, got {value}")
            options[key] = value
    return DatasetSpec(source, options)


def load_texts(spec: str | DatasetSpec, *, n: int | None = None, seed: int | None = None,
               cache: Any = None) -> list[str]:
    """Build the list of prompts a spec describes.

    Parameters
    ----------
    spec : str or DatasetSpec
        See the module docstring for the syntax.
    n, seed : int, optional
        Override the spec's ``n`` / ``seed`` options.
    cache : layerknn.Cache, optional
        Where to keep ``builtin:stdlib-docs`` once built (parsing the standard library takes
        seconds; the entry is keyed by the Python version, the library's files and this module).

    Returns
    -------
    list of str
        Same spec -> same list (on the same Python version, for ``stdlib-docs``).

    Raises
    ------
    ValueError
        Bad spec, missing file, missing field/column, or ``n`` larger than available.

    Examples
    --------
    >>> texts = load_texts("builtin:random-strings?n=3&seed=0")
    >>> len(texts), len(texts[0])
    (3, 100)
    >>> texts == load_texts("builtin:random-strings", n=3, seed=0)
    True
    """
    parsed = parse_spec(spec).with_options(n=n, seed=seed)
    opts = parsed.options
    kind = parsed.kind
    if kind == "random-strings":
        return random_strings(opts.get("n", _DEFAULT_RANDOM_N), seed=opts.get("seed", 0),
                              length=opts.get("length", 100))
    if kind == "stdlib-docs":
        items = _stdlib_texts(cache)
    elif kind == "hf":
        from ._hf_datasets import DEFAULT_FIELD, DEFAULT_SPLIT, hf_texts

        items = hf_texts(parsed.source[len("hf:"):], config=opts.get("config"),
                         split=opts.get("split", DEFAULT_SPLIT), field=opts.get("field", DEFAULT_FIELD))
    else:
        path = Path(parsed.source).expanduser()
        if not path.is_file():
            raise ValueError(f"dataset file not found: {str(path)!r}")
        if kind == ".txt":
            items = _read_txt(path)
        elif kind == ".jsonl":
            items = _read_jsonl(path, opts.get("field", "text"))
        else:
            items = _read_csv(path, opts.get("column", "text"))
    if not items:
        raise ValueError(f"dataset {str(parsed)!r} holds no texts")
    return _subsample(items, opts.get("n"), opts.get("seed", 0), str(parsed))


def random_strings(n: int, *, seed: int = 0, length: int = 100) -> list[str]:
    """``n`` seeded random strings of ``length`` characters over :data:`RANDOM_ALPHABET`.

    Examples
    --------
    >>> a = random_strings(2, seed=1, length=10)
    >>> a == random_strings(2, seed=1, length=10), [len(s) for s in a]
    (True, [10, 10])
    """
    if n < 1 or length < 1:
        raise ValueError(f"random_strings needs n >= 1 and length >= 1, got n={n}, length={length}")
    rng = np.random.default_rng(seed)
    alphabet = np.array(list(RANDOM_ALPHABET))
    codes = rng.integers(0, len(alphabet), size=(n, length))
    return ["".join(row) for row in alphabet[codes]]


def _subsample(items: list[str], n: int | None, seed: int, what: str) -> list[str]:
    if n is None or n == len(items):
        return list(items)
    if n > len(items):
        raise ValueError(f"dataset {what!r} asks for n={n} texts but only {len(items)} are available")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


def _read_text(path: Path, expected: str) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped; ValueError naming the file if not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: expected {expected} encoded as UTF-8, but byte {exc.start} "
            f"(0x{data[exc.start]:02x}) is not valid UTF-8; is this a text file? (re-save it as UTF-8)"
        ) from None


def _read_txt(path: Path) -> list[str]:
    text = _read_text(path, "a text file with one prompt per line")
    return [line for line in text.splitlines() if line.strip()]


def _read_jsonl(path: Path, key: str) -> list[str]:
    out = []
    text = _read_text(path, "JSON Lines (one JSON object per line)")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg}); expected one JSON object per line") \
                from None
        if not isinstance(record, dict) or key not in record:
            raise ValueError(f"{path}:{lineno}: record has no field {key!r} (choose one with ?field=NAME)")
        out.append(str(record[key]))
    return out


def _read_csv(path: Path, key: str) -> list[str]:
    text = _read_text(path, "CSV with a header row")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)  # bad quoting: an error
    try:
        if reader.fieldnames is None or key not in reader.fieldnames:
            raise ValueError(
                f"{path}: no column {key!r} (columns: {reader.fieldnames}); choose one with ?column=NAME"
            )
        return [row[key] for row in reader if row[key] is not None and row[key].strip()]
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({exc}); expected CSV with a header row") \
            from None


# --------------------------------------------------------------------------------------
# builtin:stdlib-docs

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_MARKUP_RE = re.compile(r"(::|`|\*\*|\$|==|->|\(\)|\w\(|\w\.\w+\()")


@functools.lru_cache(maxsize=1)
def stdlib_paragraphs() -> tuple[str, ...]:
    """Prose paragraphs from the docstrings of the local standard library (cached).

    Source files under ``sysconfig.get_paths()["stdlib"]`` are parsed with
    :func:`ast.parse` in sorted path order (test and site-packages folders skipped);
    docstrings are split at blank lines; a paragraph is kept when it has 10-80
    words, starts with a capital letter, ends with ``.``, ``!`` or ``?``, is mostly
    letters, holds no doctest/code line or reST markup, and was not seen before.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for path in _stdlib_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
            continue
        for doc in _docstrings(tree):
            for para in _paragraphs(doc):
                if para not in seen:
                    seen.add(para)
                    out.append(para)
    return tuple(out)


def _stdlib_texts(cache: Any) -> list[str]:
    """:func:`stdlib_paragraphs`, read from ``cache`` when it holds them for this exact standard library."""
    if cache is None or stdlib_paragraphs.cache_info().currsize:
        return list(stdlib_paragraphs())
    key = _stdlib_key()
    texts = cache.get_texts(key)
    if texts is None:
        texts = list(stdlib_paragraphs())
        cache.put_texts(key, texts)
    return texts


def _stdlib_key() -> str:
    """Cache key of the paragraphs: Python version, every standard-library file's size and time, these rules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    digest = hashlib.sha256(f"{sys.version}|{root}|".encode())
    digest.update(Path(__file__).read_bytes())  # the paragraph rules
    for path in _stdlib_files(root):
        try:
            st = path.stat()
        except OSError:
            continue
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "stdlib-docs-" + digest.hexdigest()[:32]


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def _docstrings(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop(0)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                yield inspect.cleandoc(body[0].value.value)
            stack.extend(n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))


def _paragraphs(doc: str):
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in block.splitlines()]
        if any(ln.startswith((">>>", "...", "$", "%", "#", "-", "*", "|", "+", ":")) for ln in lines):
            continue
        text = " ".join(" ".join(lines).split())
        if _is_prose(text):
            yield text


def _is_prose(text: str) -> bool:
    words = text.split()
    if not 10 <= len(words) <= 80:
        return False
    if not text[0].isupper() or text[-1] not in ".!?":
        return False
    if ">>>" in text or _MARKUP_RE.search(text):
        return False
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters < 0.85 * len(chars):
        return False
    return len(_WORD_RE.findall(text)) >= 0.8 * len(words)
