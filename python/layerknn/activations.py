"""The result of ``layerknn.extract``: pooled per-layer activations with provenance.

``Activations`` holds the ``(layers, n, d)`` tensor plus what produced it (model name, layer
indices, pooling, token counts, truncation flags, a fingerprint for caching).  It persists
through :mod:`layerknn.store` (``.npz`` or ``.safetensors``, checksummed, written
atomically), so damaged or foreign files raise ValueError naming the file.
``Activations.from_array`` wraps a bare array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import store

if TYPE_CHECKING:  # pragma: no cover - torch is imported where tensors are made, not with the package
    import torch

__all__ = ["Activations"]

_KIND = "activations"


@dataclass
class Activations:
    """Pooled hidden states of one model over ``n`` texts.

    Attributes
    ----------
    values : torch.Tensor
        ``(S, n, d)``: one pooled vector per (selected layer, text). With ``layers=None``
        ``S = num_layers + 1``; index 0 is the input to the first block (embeddings after
        any model-specific scaling) and index ``num_layers`` the last block's output after
        the final norm, exactly as HF's ``output_hidden_states``.
    layers : tuple of int
        The hidden-state index (0..num_layers) of each entry of ``values``' first axis.
    model_name : str
        The model's ``name_or_path`` (or the layerknn alias it was loaded from).
    num_layers, hidden_size : int
        Number of blocks L and width d of the model.
    pooling : str
        ``"last"``, ``"mean"`` or ``"mean_no_bos"``.
    token_counts : torch.Tensor
        ``(n,)`` int64 tokens per text after truncation (special tokens included).
    truncated : torch.Tensor
        ``(n,)`` bool, True where a text was cut to ``max_length``.
    fingerprint : str
        Hex digest of (model identity, tokenizer, texts, pooling, max_length,
        chat_template, layers); equal fingerprints mean equal extractions.
    max_length : int or None
        The effective token limit used (None: unlimited).
    chat_template : bool
        Whether texts were wrapped in the tokenizer's chat template.

    Examples
    --------
    >>> import torch
    >>> from layerknn import Activations
    >>> acts = Activations(values=torch.zeros(3, 4, 8), layers=(0, 1, 2), model_name="toy",
    ...                    num_layers=2, hidden_size=8, pooling="last",
    ...                    token_counts=torch.ones(4, dtype=torch.int64),
    ...                    truncated=torch.zeros(4, dtype=torch.bool), fingerprint="00")
    >>> acts.values.shape
    torch.Size([3, 4, 8])
    >>> acts.layer(2).shape
    torch.Size([4, 8])
    """

    values: torch.Tensor
    layers: tuple
    model_name: str
    num_layers: int
    hidden_size: int
    pooling: str
    token_counts: torch.Tensor
    truncated: torch.Tensor
    fingerprint: str
    max_length: int | None = None
    chat_template: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layers = tuple(int(layer) for layer in self.layers)

    @property
    def num_texts(self) -> int:
        return int(self.values.shape[1])

    def layer(self, index: int) -> torch.Tensor:
        """The ``(n, d)`` pooled vectors of hidden-state ``index`` (0..num_layers)."""
        if index < 0:
            index += self.num_layers + 1
        if index not in self.layers:
            raise ValueError(f"layer {index} was not extracted; available layers: {list(self.layers)}")
        return self.values[self.layers.index(index)]

    def __repr__(self) -> str:
        return (
            f"Activations(model={self.model_name!r}, values={tuple(self.values.shape)} "
            f"{str(self.values.dtype).replace('torch.', '')} on {self.values.device}, "
            f"pooling={self.pooling!r}, layers={len(self.layers)}/{self.num_layers + 1}, "
            f"truncated={int(self.truncated.sum())}, fingerprint={self.fingerprint[:12]})"
        )

    # ---- construction and persistence -------------------------------------------------

    @classmethod
    def from_array(cls, values, *, model_name: str = "array", pooling: str | None = None) -> "Activations":
        """Wrap a bare ``(L + 1, n, d)`` array (NumPy or torch) as activations of all layers.

        The fingerprint is a digest of the array's bytes, so equal arrays share cache entries.

        Examples
        --------
        >>> import numpy as np
        >>> acts = Activations.from_array(np.zeros((3, 5, 4), np.float32), model_name="toy")
        >>> acts.num_layers, acts.hidden_size, acts.num_texts
        (2, 4, 5)
        """
        import torch

        if isinstance(values, np.ma.MaskedArray):
            raise TypeError(f"activations of {model_name!r} must be a plain array, got a NumPy masked array "
                            "(its mask would be ignored); pass arr.filled(...) or drop masked prompts")
        tensor = values.detach() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
        if tensor.ndim != 3:
            raise ValueError(f"activations of {model_name!r} must have shape (layers, n, d), "
                             f"got shape {tuple(tensor.shape)}")
        if tensor.shape[0] < 2:
            raise ValueError(f"activations of {model_name!r} need the embeddings and at least one block "
                             f"(layers >= 2), got shape {tuple(tensor.shape)}")
        if not (tensor.is_floating_point()):
            raise TypeError(f"activations of {model_name!r} must be floating point, got {tensor.dtype}")
        n = int(tensor.shape[1])
        return cls(values=tensor, layers=tuple(range(tensor.shape[0])), model_name=str(model_name),
                   num_layers=int(tensor.shape[0]) - 1, hidden_size=int(tensor.shape[2]),
                   pooling=pooling or "unknown", token_counts=torch.zeros(n, dtype=torch.int64),
                   truncated=torch.zeros(n, dtype=torch.bool),
                   fingerprint="array-" + store.checksum({"values": _to_numpy(tensor.cpu().contiguous())}))

    def _metadata(self) -> dict:
        return {
            "model_name": self.model_name,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "pooling": self.pooling,
            "layers": list(self.layers),
            "fingerprint": self.fingerprint,
            "max_length": self.max_length,
            "chat_template": bool(self.chat_template),
            "dtype": str(self.values.dtype).replace("torch.", ""),
            "extra": self.extra,
        }

    def save(self, path) -> Path:
        """Write to ``path`` (``.npz`` or ``.safetensors``) in layerknn's checked format; returns the path.

        Examples
        --------
        >>> import tempfile, os, torch
        >>> from layerknn import Activations
        >>> acts = Activations(values=torch.arange(24.).reshape(2, 3, 4), layers=(0, 1),
        ...                    model_name="toy", num_layers=1, hidden_size=4, pooling="mean",
        ...                    token_counts=torch.tensor([1, 2, 3]),
        ...                    truncated=torch.zeros(3, dtype=torch.bool), fingerprint="ab")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = acts.save(os.path.join(tmp, "acts.npz"))
        ...     back = Activations.load(path)
        >>> torch.equal(back.values, acts.values), back.fingerprint
        (True, 'ab')
        """
        import torch

        arrays = {
            "values": _to_numpy(self.values.detach().to("cpu").contiguous()),
            "token_counts": self.token_counts.detach().to("cpu", torch.int64).numpy(),
            "truncated": self.truncated.detach().to("cpu", torch.bool).numpy(),
        }
        return store.write(path, arrays, self._metadata(), kind=_KIND)

    @classmethod
    def load(cls, path, *, device=None) -> "Activations":
        """Read a file written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is truncated, corrupt, or not a layerknn activations file (names the file).
        """
        import torch

        arrays, meta = store.read(path, kind=_KIND)
        try:
            values = _from_numpy(arrays["values"], meta["dtype"])
            layers = tuple(int(x) for x in meta["layers"])
            acts = cls(values=values, layers=layers, model_name=str(meta["model_name"]),
                       num_layers=int(meta["num_layers"]), hidden_size=int(meta["hidden_size"]),
                       pooling=str(meta["pooling"]), token_counts=torch.from_numpy(arrays["token_counts"]),
                       truncated=torch.from_numpy(arrays["truncated"]), fingerprint=str(meta["fingerprint"]),
                       max_length=meta.get("max_length"), chat_template=bool(meta.get("chat_template", False)),
                       extra=meta.get("extra") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise store.FormatError(f"{str(path)!r} is missing layerknn activations metadata ({exc})") from None
        if values.ndim != 3 or len(layers) != values.shape[0] or values.shape[2] != acts.hidden_size \
                or acts.token_counts.shape != (values.shape[1],) or acts.truncated.shape != (values.shape[1],):
            raise store.FormatError(f"{str(path)!r} is inconsistent: values {tuple(values.shape)}, "
                                    f"{len(layers)} layers, hidden size {acts.hidden_size}")
        if device is not None:
            acts.values = values.to(device)
        return acts


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: store the raw bits
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


def _from_numpy(array: np.ndarray, dtype_name: str | None) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dtype_name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor
