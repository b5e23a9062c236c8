"""Named zoo runs (``layerknn zoo --preset paper``): the models by hub id, what a run needs, what is here.

A preset names models, datasets, n and k.  :func:`plan` turns it (or any list of models)
into a table of each model's size, its memory in the chosen dtype and the GPUs it needs, and
:func:`missing_offline` says which models are not on this machine, looking only at the local
Hugging Face cache (``try_to_load_from_cache``: no network).  Offline (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE``) or with the hub unreachable, a run with missing models stops at once
with :class:`ModelsNotAvailable` listing them, instead of failing on the first download.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

__all__ = ["HubModel", "Preset", "PRESETS", "get_preset", "plan", "format_plan", "missing_offline", "is_offline",
           "hub_reachable", "require_available", "show_plan", "ModelsNotAvailable"]

GIB = 2**30
#: Memory of one GPU assumed by the plan (an 80 GB A100/H100).
GPU_MEMORY = 80 * GIB
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelsNotAvailable(FileNotFoundError):
    """Models of a run are not in the local Hugging Face cache and cannot be downloaded now."""


@dataclass(frozen=True)
class HubModel:
    """A model on the Hugging Face hub and its size (parameters in billions, blocks, hidden width)."""

    repo: str
    params_b: float
    layers: int
    hidden: int


@dataclass(frozen=True)
class Preset:
    """A named run: models, datasets (specs, without n), n prompts per dataset and k."""

    name: str
    models: tuple[HubModel, ...]
    datasets: tuple[str, ...]
    n: int
    k: int
    description: str = ""


# The list follows the model families of "Layers at Similar Depths Generate Similar Activations
# Across LLM Architectures" (GPT-2, Pythia, Llama-3.x up to 70B, Mistral, Qwen2.5, Gemma-2, Phi,
# OLMo; about 24 models).  The exact checkpoints are a representative choice per family, with
# sizes from their model cards, not a transcription of the paper's table.
_PAPER = (
    HubModel("openai-community/gpt2", 0.124, 12, 768),
    HubModel("openai-community/gpt2-medium", 0.355, 24, 1024),
    HubModel("openai-community/gpt2-large", 0.774, 36, 1280),
    HubModel("openai-community/gpt2-xl", 1.56, 48, 1600),
    HubModel("EleutherAI/pythia-160m", 0.162, 12, 768),
    HubModel("EleutherAI/pythia-410m", 0.405, 24, 1024),
    HubModel("EleutherAI/pythia-1b", 1.01, 16, 2048),
    HubModel("EleutherAI/pythia-1.4b", 1.41, 24, 2048),
    HubModel("EleutherAI/pythia-2.8b", 2.78, 32, 2560),
    HubModel("EleutherAI/pythia-6.9b", 6.86, 32, 4096),
    HubModel("meta-llama/Llama-3.2-1B", 1.24, 16, 2048),
    HubModel("meta-llama/Llama-3.2-3B", 3.21, 28, 3072),
    HubModel("meta-llama/Llama-3.1-8B", 8.03, 32, 4096),
    HubModel("meta-llama/Llama-3.1-70B", 70.6, 80, 8192),
    HubModel("mistralai/Mistral-7B-v0.3", 7.25, 32, 4096),
    HubModel("Qwen/Qwen2.5-0.5B", 0.494, 24, 896),
    HubModel("Qwen/Qwen2.5-1.5B", 1.54, 28, 1536),
    HubModel("Qwen/Qwen2.5-7B", 7.62, 28, 3584),
    HubModel("google/gemma-2-2b", 2.61, 26, 2304),
    HubModel("google/gemma-2-9b", 9.24, 42, 3584),
    HubModel("microsoft/phi-2", 2.78, 32, 2560),
    HubModel("microsoft/Phi-3-mini-4k-instruct", 3.82, 32, 3072),
    HubModel("allenai/OLMo-1B-hf", 1.18, 16, 2048),
    HubModel("allenai/OLMo-2-1124-7B", 7.30, 32, 4096),
)

PRESETS = {
    "paper": Preset("paper", _PAPER, ("builtin:stdlib-docs", "builtin:random-strings"), 1024, 10,
                    "the paper's model families (GPT-2 to Llama-3.1-70B) on the two builtin datasets"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError listing the known ones otherwise).

    Examples
    --------
    >>> p = get_preset("paper")
    >>> len(p.models) >= 20, p.models[0].repo
    (True, 'openai-community/gpt2')
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {name!r}")
    return PRESETS[name]


def plan(models: Sequence[Any], *, n: int, k: int, datasets: Sequence[str], dtype: str,
         gpu_memory: int = GPU_MEMORY) -> list[dict]:
    """One row per model: name, parameters, layers, memory in ``dtype`` (weights + activations), GPUs needed.

    Sizes are known for the presets' models (:class:`HubModel`); other models get ``None``.
    Memory counts the weights in ``dtype`` plus the pooled float32 activations of one
    dataset, (L + 1) × n × d, twice (buffer and copy); GPUs is that over ``gpu_memory``.

    Examples
    --------
    >>> row = plan([get_preset("paper").models[13]], n=1024, k=10, datasets=["d"], dtype="bfloat16")[0]
    >>> row["model"], row["gpus"]
    ('meta-llama/Llama-3.1-70B', 2)
    """
    known = {m.repo: m for preset in PRESETS.values() for m in preset.models}
    rows = []
    for model in models:
        info = model if isinstance(model, HubModel) else known.get(str(model))
        name = info.repo if info is not None else str(model)
        if info is None:
            rows.append({"model": name, "params_b": None, "layers": None, "memory": None, "gpus": None})
            continue
        memory = int(info.params_b * 1e9 * _BYTES.get(dtype, 4) + 2 * (info.layers + 1) * n * info.hidden * 4)
        rows.append({"model": name, "params_b": info.params_b, "layers": info.layers, "memory": memory,
                     "gpus": max(1, math.ceil(memory / gpu_memory))})
    return rows


def format_plan(rows: list[dict], *, title: str, datasets: Sequence[str], n: int, k: int, dtype: str,
                missing: Sequence[str] = (), gpu_memory: int = GPU_MEMORY) -> str:
    """The plan as text: what runs, each model's needs, the totals and the models not on this machine."""
    lines = [f"{title}: {len(rows)} models x {len(datasets)} datasets = {len(rows) * len(datasets)} units, "
             f"n={n}, k={k}, dtype {dtype}",
             "datasets: " + ", ".join(datasets)]
    width = max(len(r["model"]) for r in rows) if rows else 5
    lines.append(f"{'model'.ljust(width)}  {'params':>8}  {'layers':>6}  {'memory':>10}  {'GPUs':>4}  here")
    for r in rows:
        params = f"{r['params_b']:.2f} B" if r["params_b"] is not None else "?"
        memory = f"{r['memory'] / GIB:.1f} GiB" if r["memory"] is not None else "?"
        gpus = str(r["gpus"]) if r["gpus"] is not None else "?"
        here = "missing" if r["model"] in missing else "yes"
        lines.append(f"{r['model'].ljust(width)}  {params:>8}  {str(r['layers'] or '?'):>6}  {memory:>10}  "
                     f"{gpus:>4}  {here}")
    sized = [r for r in rows if r["memory"] is not None]
    if sized:
        largest = max(sized, key=lambda r: r["memory"])
        total = sum(r["params_b"] for r in sized) * 1e9 * _BYTES.get(dtype, 4)
        lines.append(f"needs: one model at a time per worker; the largest, {largest['model']}, "
                     f"{largest['memory'] / GIB:.1f} GiB ({largest['gpus']} GPU(s) of {gpu_memory // GIB} GiB"
                     + (", spread with --device auto" if largest["gpus"] > 1 else "") + f"); all weights "
                     f"{total / GIB:.0f} GiB in {dtype}")
    if missing:
        lines.append(f"not on this machine ({len(missing)} of {len(rows)}): " + ", ".join(missing))
    return "\n".join(lines)


def _cached(repo: str, cache_dir: Any = None) -> bool:
    """Whether ``repo``'s config and weights (every shard of an index) are in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    def here(filename: str) -> str | None:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        return found if isinstance(found, str) else None

    if here("config.json") is None:
        return False
    for name in _WEIGHTS:
        path = here(name)
        if path is None:
            continue
        if not name.endswith(".index.json"):
            return True
        import json

        try:
            shards = set(json.loads(Path(path).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return all(here(shard) is not None for shard in shards)
    return False


def missing_offline(models: Sequence[Any], cache_dir: Any = None) -> list[str]:
    """The hub ids among ``models`` whose files are not in the local Hugging Face cache (no network used).

    Local paths, aliases and in-memory models are not hub ids and never listed.

    Examples
    --------
    >>> import tempfile
    >>> missing_offline(["EleutherAI/pythia-160m", "smollm2-135m"], cache_dir=tempfile.mkdtemp())
    ['EleutherAI/pythia-160m']
    """
    names = [m.repo if isinstance(m, HubModel) else m for m in models]
    hub = [m for m in names if isinstance(m, str) and _is_hub_id(m)]
    return [m for m in hub if not _cached(m, cache_dir)]


def _is_hub_id(name: str) -> bool:
    if os.path.exists(name) or name.count("/") != 1:
        return False
    from .models import list_aliases

    return name not in {row["alias"] for row in list_aliases()}


def is_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set true)."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's endpoint accepts a connection within ``timeout`` seconds (False when offline)."""
    if is_offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_available(missing: Sequence[str]) -> None:
    """Raise :class:`ModelsNotAvailable` listing ``missing`` when they cannot be downloaded now."""
    if not missing:
        return
    why = "the hub is switched off (HF_HUB_OFFLINE)" if is_offline() else "the hub cannot be reached"
    if is_offline() or not hub_reachable():
        raise ModelsNotAvailable(f"{len(missing)} models are not in the local Hugging Face cache and {why}: "
                                 f"{', '.join(missing)}; download them first (huggingface-cli download NAME) "
                                 "or run with hub access")


def _prompt_count(spec: str | None) -> int | None:
    if spec is None:
        return None
    from .datasets import load_texts, parse_spec

    parsed = parse_spec(spec)
    n = parsed.options.get("n")
    return int(n) if n is not None else len(load_texts(parsed))


def show_plan(models: Sequence[Any], specs: Sequence[str | None], *, k: int, dtype: str, device: Any = None,
              title: str = "zoo") -> list[str]:
    """Print the plan of a zoo run (see :func:`plan`, :func:`format_plan`); return the models missing offline."""
    from .options import resolve_dtype

    dtype = resolve_dtype(dtype, device)
    sizes = [_prompt_count(spec) for spec in specs]
    n = max((s for s in sizes if s is not None), default=0)
    names = [m if isinstance(m, str) else type(m).__name__ for m in models]
    missing = missing_offline(names)
    rows = plan(names, n=n, k=k, datasets=[str(s) for s in specs], dtype=dtype)
    print(format_plan(rows, title=title, datasets=[str(s) for s in specs], n=n, k=k, dtype=dtype, missing=missing),
          flush=True)
    return missing
