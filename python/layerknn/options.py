"""The one set of defaults shared by ``compare``, ``zoo`` and the command line, and their checks.

Every default lives here and nowhere else: the library functions take their keyword
defaults from :data:`DEFAULTS`, the CLI builds its options from the same object, and a test
checks the README's table against it.  :data:`MAIN_JOB` is the named preset that
``layerknn compare`` runs when no model is given.

Options are split by what they affect: :class:`LoadOptions` (how a model named by a string
is loaded) and :class:`ExtractOptions` (how activations are taken from a loaded model).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Defaults", "DEFAULTS", "MAIN_JOB", "LoadOptions", "ExtractOptions", "check_count",
           "resolve_dtype"]


@dataclass(frozen=True)
class Defaults:
    """Defaults of every option that both the library and the CLI take."""

    k: int = 10
    measure: str = "mutual"
    pooling: str = "last"
    max_length: int | None = None
    batch_size: Any = "auto"
    chat_template: bool = False
    dtype: str = "float32"
    trust_remote_code: bool = False
    bootstrap: int = 1000
    permutations: int = 200
    seed: int = 0
    cache: bool = True
    executor: str = "local"


DEFAULTS = Defaults()

#: ``layerknn compare`` with no models: two offline models on 1024 standard-library
#: docstring paragraphs, prompts cut to 64 tokens; everything else from :data:`DEFAULTS`.
MAIN_JOB = {
    "models": ("smollm2-135m", "gemma3-270m"),
    "data": "builtin:stdlib-docs",
    "n": 1024,
    "max_length": 64,
}


def check_count(value: Any, name: str, minimum: int = 0) -> int:
    """An integer option ``>= minimum`` (TypeError for non-integers, ValueError below the minimum).

    Examples
    --------
    >>> check_count(3, "bootstrap")
    3
    >>> check_count(-1, "bootstrap")
    Traceback (most recent call last):
    ...
    ValueError: bootstrap must be an integer >= 0, got -1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def resolve_dtype(dtype: Any, device: Any = None) -> str:
    """The parameter dtype name to load models in: ``"auto"`` resolved for this machine.

    ``"auto"`` is ``"bfloat16"`` on a CPU with native bfloat16 arithmetic (AVX512-BF16 or
    AMX) and ``"float32"`` elsewhere (and on GPUs, where activations stay exact in fp32).

    Examples
    --------
    >>> resolve_dtype("float32")
    'float32'
    """
    name = str(dtype).replace("torch.", "")
    if name not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be one of 'auto', 'float32', 'bfloat16', 'float16', got {dtype!r}")
    if name != "auto":
        return name
    if device is not None and not str(device).startswith("cpu"):
        return "float32"
    import torch

    probes = [getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None)]
    try:
        native = any(probe is not None and probe() for probe in probes)
    except Exception:  # noqa: BLE001 - capability probing must never break a run
        native = False
    return "bfloat16" if native else "float32"


@dataclass(frozen=True)
class LoadOptions:
    """How a model given by name or path is loaded (see :func:`layerknn.load_model`)."""

    dtype: str = DEFAULTS.dtype
    device: Any = None
    trust_remote_code: bool = DEFAULTS.trust_remote_code

    def resolved(self) -> "LoadOptions":
        """The same options with ``dtype="auto"`` replaced by what this machine uses."""
        return LoadOptions(resolve_dtype(self.dtype, self.device), self.device, bool(self.trust_remote_code))


@dataclass(frozen=True)
class ExtractOptions:
    """How activations are taken from a loaded model (see :func:`layerknn.extract`)."""

    pooling: str = DEFAULTS.pooling
    max_length: int | None = DEFAULTS.max_length
    batch_size: Any = DEFAULTS.batch_size
    chat_template: bool = DEFAULTS.chat_template

    def as_kwargs(self) -> dict:
        """Keyword arguments for :func:`layerknn.extract`."""
        return asdict(self)
