"""The result of ``layerknn.extract``: pooled per-layer activations with provenance.

``Activations`` holds the ``(layers, n, d)`` tensor plus what produced it (model name, layer
indices, pooling, token counts, truncation flags, a fingerprint for caching) and persists to
``.safetensors`` or ``.npz`` with JSON metadata and a checksum, written atomically, so a
cache can trust what it loads: damaged or foreign files raise ValueError.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Activations"]

_FORMAT_VERSION = 1


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

    # ---- persistence -----------------------------------------------------------------

    def _metadata(self) -> dict:
        return {
            "format_version": _FORMAT_VERSION,
            "model_name": self.model_name,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "pooling": self.pooling,
            "layers": list(self.layers),
            "fingerprint": self.fingerprint,
            "max_length": self.max_length,
            "chat_template": bool(self.chat_template),
            "dtype": str(self.values.dtype).replace("torch.", ""),
            "shape": list(self.values.shape),
            "extra": self.extra,
        }

    def save(self, path) -> Path:
        """Write to ``path`` (``.safetensors`` or ``.npz``) atomically; returns the path.

        A checksum of all arrays is stored, so ``load`` detects corrupt files.

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
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".safetensors", ".npz"):
            raise ValueError(f"path must end in .safetensors or .npz, got {str(path)!r}")
        arrays = {
            "values": self.values.detach().to("cpu").contiguous(),
            "token_counts": self.token_counts.detach().to("cpu", torch.int64).contiguous(),
            "truncated": self.truncated.detach().to("cpu", torch.bool).contiguous(),
        }
        metadata = self._metadata()
        metadata["checksum"] = _checksum(arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                if suffix == ".safetensors":
                    from safetensors.torch import save

                    handle.write(save(arrays, metadata={"layerknn": json.dumps(metadata)}))
                else:
                    numpy_arrays = {name: _to_numpy(tensor) for name, tensor in arrays.items()}
                    numpy_arrays["metadata"] = np.array(json.dumps(metadata))
                    np.savez(handle, **numpy_arrays)
            os.replace(tmp_name, path)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return path

    @classmethod
    def load(cls, path, *, device=None) -> "Activations":
        """Read a file written by ``save``.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is truncated, corrupt, or not a layerknn activations file.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no activations file at {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix not in (".safetensors", ".npz"):
            raise ValueError(f"path must end in .safetensors or .npz, got {str(path)!r}")
        try:
            if suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    header = handle.metadata() or {}
                    arrays = {name: handle.get_tensor(name) for name in handle.keys()}
                metadata = json.loads(header["layerknn"])
            else:
                with np.load(path, allow_pickle=False) as data:
                    metadata = json.loads(str(data["metadata"]))
                    arrays = {
                        name: _from_numpy(data[name], metadata["dtype"] if name == "values" else None)
                        for name in ("values", "token_counts", "truncated")
                    }
        except Exception as error:  # any reader failure means a damaged or foreign file
            raise ValueError(f"{str(path)!r} is not a readable layerknn activations file ({error})") from error
        try:
            expected = metadata["checksum"]
            shape = tuple(metadata["shape"])
            values = arrays["values"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{str(path)!r} is missing layerknn metadata ({error})") from error
        if tuple(values.shape) != shape or _checksum(arrays) != expected:
            raise ValueError(f"{str(path)!r} is corrupt: its arrays do not match the stored checksum/shape")
        if device is not None:
            values = values.to(device)
        return cls(
            values=values,
            layers=tuple(metadata["layers"]),
            model_name=metadata["model_name"],
            num_layers=int(metadata["num_layers"]),
            hidden_size=int(metadata["hidden_size"]),
            pooling=metadata["pooling"],
            token_counts=arrays["token_counts"],
            truncated=arrays["truncated"],
            fingerprint=metadata["fingerprint"],
            max_length=metadata.get("max_length"),
            chat_template=bool(metadata.get("chat_template", False)),
            extra=metadata.get("extra", {}),
        )


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: store the raw bits
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


def _from_numpy(array: np.ndarray, dtype_name: str | None) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dtype_name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor


def _checksum(arrays: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        tensor = arrays[name]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(_to_numpy(tensor.contiguous()).view(np.uint8).reshape(-1).data)
    return digest.hexdigest()
