"""Turning the caller's arrays into what ``layerknn._core`` accepts, and back.

Every public function receives NumPy arrays, torch tensors (CPU or CUDA) or any object speaking
``__dlpack__`` / ``__cuda_array_interface__`` (CuPy, JAX). This module validates and normalises
them once, at the boundary: it records where they came from (so results go back as the caller's
array type), converts to contiguous float32 / int32, and never copies an array that is already
in the right form.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any

import numpy as np


def _torch():
    """torch, imported on first use: NumPy callers never pay for it (it is a dependency, but a heavy one)."""
    import torch

    return torch

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where an input array came from, so outputs can be handed back in the same form.

    ``kind`` is ``"numpy"``, ``"torch"`` or ``"dlpack"`` (another library's array, returned
    through ``module.from_dlpack`` when that library has one, else as a torch tensor).
    """

    kind: str
    device: str = "cpu"
    module: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


def _dtype_name(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return x.dtype.name  # byte-order neutral: '>f4' is 'float32'
    return str(x.dtype).replace("torch.", "")


def to_backend_array(x: Any, name: str) -> tuple[Any, Origin]:
    """Return ``x`` as a NumPy array (host data) or a torch tensor (CUDA data) plus its origin.

    Nothing is converted yet apart from wrapping foreign arrays; dtype and layout are handled by
    :func:`as_float32` / :func:`as_int32`.
    """
    if isinstance(x, np.ma.MaskedArray):  # a subclass of ndarray: its mask would be silently dropped
        raise TypeError(
            f"{name} must be a plain NumPy array, got a masked array (numpy.ma.MaskedArray); layerknn cannot "
            f"honour a mask: drop the masked rows, or pass {name}.filled(value) / {name}.data explicitly"
        )
    if isinstance(x, np.ndarray):
        return x, Origin("numpy")
    if _is_torch(x):
        return x.detach(), Origin("torch", str(x.device))
    if hasattr(x, "__cuda_array_interface__") or hasattr(x, "__dlpack__"):
        try:
            torch = _torch()
        except ImportError:  # pragma: no cover - exercised only in minimal environments
            raise TypeError(f"{name}: converting a {type(x).__name__} needs torch installed") from None
        if hasattr(x, "__dlpack__"):
            tensor = torch.from_dlpack(x)
        else:  # __cuda_array_interface__ only (e.g. Numba device arrays)
            tensor = torch.as_tensor(x, device="cuda")
        return tensor, Origin("dlpack", str(tensor.device), type(x).__module__.split(".")[0])
    if isinstance(x, (list, tuple)):
        return np.asarray(x), Origin("numpy")
    raise TypeError(
        f"{name} must be a NumPy array, a torch tensor or a DLPack-capable array, "
        f"got {type(x).__name__}"
    )


def as_float32(x: Any, name: str) -> Any:
    """Contiguous float32 copy of ``x`` (no copy when it already is one).

    Raises TypeError for non-floating dtypes, naming ``name`` and the dtype that came.
    """
    dtype = _dtype_name(x)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype ({', '.join(_FLOAT_DTYPES)}), got {dtype}")
    if dtype == "float64":
        biggest = float(np.abs(x).max() if isinstance(x, np.ndarray) else x.abs().max())
        if biggest > float(np.finfo(np.float32).max):
            raise ValueError(
                f"{name} has values beyond the float32 range (largest |value| {biggest:.3g}); "
                "layerknn computes in float32: rescale the input"
            )
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return x.to(_torch().float32).contiguous()


def as_int32(x: Any, name: str) -> Any:
    """Contiguous int32 copy of an integer index array; TypeError for other dtypes."""
    dtype = _dtype_name(x)
    if not dtype.startswith(("int", "uint")):
        raise TypeError(f"{name} must have an integer dtype, got {dtype}")
    if x.size == 0 if isinstance(x, np.ndarray) else x.numel() == 0:
        return np.ascontiguousarray(x, dtype=np.int32) if isinstance(x, np.ndarray) else x.to(_torch().int32)
    wide = x if isinstance(x, np.ndarray) else x.to(_torch().int64)  # torch lacks min/max for uint16/32
    low, high = (int(wide.min()), int(wide.max()))
    if low < 0:
        raise ValueError(f"{name} holds neighbour indices, which must be >= 0, got {low}")
    if high > np.iinfo(np.int32).max:
        raise ValueError(f"{name} holds an index too large for int32: {high}")
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.int32)
    return x.to(_torch().int32).contiguous()


def to_host_numpy(x: Any) -> np.ndarray:
    """NumPy view of a host array or CPU tensor (zero-copy for CPU tensors)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return x
    return x.cpu().numpy()


def restore(result: Any, origin: Origin) -> Any:
    """Hand ``result`` (NumPy array or torch tensor) back in the caller's array type and device."""
    if result is None:
        return None
    if origin.kind == "numpy":
        return to_host_numpy(result)
    tensor = result if _is_torch(result) else _torch().as_tensor(np.asarray(result))  # keeps 0-d
    if str(tensor.device) != origin.device:
        tensor = tensor.to(origin.device)
    if origin.kind == "dlpack" and origin.module:
        try:
            module = importlib.import_module(origin.module)
            if hasattr(module, "from_dlpack"):
                return module.from_dlpack(tensor)
        except Exception:  # noqa: BLE001, S110 - fall back to the torch tensor
            pass
    return tensor
