"""Texts of a Hugging Face dataset, for ``hf:`` specs (see datasets.py): from the hub or a saved copy.

``hf:<hub id>[/<config>]`` goes through ``datasets.load_dataset`` (cached data work offline);
``hf:<local folder>`` reads a dataset written by ``save_to_disk`` (or a folder of data files
``load_dataset`` understands). One column of one split becomes the list of texts: ``None`` and
blank values are dropped, other values are kept as ``str``; datasets.py then samples ``n`` of
them as it does for files. Every failure is a ValueError naming the dataset; offline mode
(``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) or no network says so. The ``datasets``
package is imported only here, only when an ``hf:`` spec is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SPLIT = "train"
DEFAULT_FIELD = "text"


def split_name(name: str) -> tuple[str, str | None]:
    """``(hub id or path, config)`` of the part after ``hf:``: ``owner/repo/config`` names a config.

    Examples
    --------
    >>> split_name("Salesforce/wikitext/wikitext-103-raw-v1"), split_name("allenai/c4")
    (('Salesforce/wikitext', 'wikitext-103-raw-v1'), ('allenai/c4', None))
    """
    if is_local(name):
        return name, None
    parts = name.split("/")
    if len(parts) == 3 and all(parts):
        return f"{parts[0]}/{parts[1]}", parts[2]
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"hf: dataset {name!r}: expected a hub id 'name' or 'owner/name', optionally "
                         "followed by '/config', or a local folder written by save_to_disk")
    return name, None


def is_local(name: str) -> bool:
    """Whether ``name`` is a path on this machine rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(name))


def _offline() -> bool:
    flags = [os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
             for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")]
    try:
        import datasets

        flags.append(bool(datasets.config.HF_DATASETS_OFFLINE))
    except (ImportError, AttributeError):
        pass
    return any(flags)


def _load(name: str, config: str | None, split: str):
    try:
        import datasets
    except ImportError:
        raise ValueError(f"hf: dataset {name!r} needs the 'datasets' package: pip install 'layerknn[hf]'") from None
    described = repr(name) + (f" (config {config!r})" if config else "")
    if is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"hf: dataset folder {str(path)!r} does not exist")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as exc:  # noqa: BLE001 - any reading failure, named
                raise ValueError(f"hf: cannot read the saved dataset at {str(path)!r}: {exc}") from exc
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"hf: dataset {described} has no split {split!r}; its splits are "
                                     f"{sorted(loaded)} (choose one with ?split=NAME)")
                return loaded[split]
            return loaded  # a single saved split
    try:
        return datasets.load_dataset(str(Path(name).expanduser()) if is_local(name) else name, config, split=split)
    except ConnectionError as exc:
        why = ("offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if _offline()
               else "the Hugging Face hub cannot be reached")
        raise ValueError(f"hf: dataset {described} is not in the local datasets cache and {why}; download it "
                         "once with network access, or save it with save_to_disk and use hf:/path/to/folder "
                         f"({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - unknown dataset, config or split: named, with the library's reason
        raise ValueError(f"hf: cannot load dataset {described}, split {split!r}: {exc}") from exc


def hf_texts(name: str, *, config: str | None = None, split: str = DEFAULT_SPLIT,
             field: str = DEFAULT_FIELD) -> list[str]:
    """The non-blank values of column ``field`` of ``split`` of dataset ``name``, in row order."""
    if config is None:
        name, config = split_name(name)
    dataset = _load(name, config, split)
    columns = list(getattr(dataset, "column_names", None) or [])
    if field not in columns:
        raise ValueError(f"hf: dataset {name!r} has no field {field!r}; its columns are {columns} "
                         "(choose one with ?field=NAME)")
    values = dataset[field]
    return [value if isinstance(value, str) else str(value) for value in values
            if value is not None and str(value).strip()]
