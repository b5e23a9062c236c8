"""Pooled per-layer activations of a language model over a list of texts.

``extract`` tokenises the texts, sorts them by length into right-padded batches, and runs
the headless base model with forward hooks on its block list; each hook pools its batch
(last token / mean / mean without BOS) straight into a preallocated ``(layers, n, d)``
buffer, and the pass stops after the last layer needed, so no logits and no full hidden
states are ever kept. The result, ``Activations``, matches pooling HF's per-prompt
``output_hidden_states`` and can be saved, loaded and fingerprinted for caching.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ._blocks import (
    embedding_rows,
    find_model_parts,
    hidden_size_of,
    input_embedding_device,
    max_positions_of,
)
from ._pooling import BatchPooler, check_pooling

__all__ = ["Activations", "extract", "fingerprint_for"]

_FORMAT_VERSION = 1
_FINGERPRINT_SCHEMA = "layerknn-extract-v1"
# Tokenizers report "no limit" as a huge model_max_length; ignore values above this.
_HUGE_LENGTH = 10**7


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


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
    >>> from layerknn.extract import Activations
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
        >>> from layerknn.extract import Activations
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


# --------------------------------------------------------------------------------------
# Identity and fingerprints
# --------------------------------------------------------------------------------------

_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "quantization_config", "dtype", "torch_dtype"}


def _model_name(model) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    return str(name) or type(model).__name__


def _model_identity(model) -> dict:
    """name_or_path + config hash + a cheap digest of sampled parameter values."""
    config = getattr(model, "config", None)
    config_dict = {}
    if config is not None:
        config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    config_hash = hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()
    weights = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            weights.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype};".encode())
            if parameter.device.type == "meta" or parameter.numel() == 0:
                continue
            flat = parameter.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            sample = flat[::step][:256].to("cpu", torch.float32)
            weights.update(sample.numpy().tobytes())
    return {"name": _model_name(model), "config": config_hash, "weights": weights.hexdigest()}


def _tokenizer_identity(tokenizer, chat_template: bool) -> dict:
    identity = {
        "class": type(tokenizer).__name__,
        "name": str(getattr(tokenizer, "name_or_path", "")),
        "size": _tokenizer_size(tokenizer),
        "bos": getattr(tokenizer, "bos_token_id", None),
        "eos": getattr(tokenizer, "eos_token_id", None),
    }
    if chat_template:
        identity["chat_template"] = hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()
    return identity


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def fingerprint_for(
    model,
    texts: Sequence[str],
    *,
    tokenizer=None,
    pooling: str = "last",
    max_length: int | None = None,
    chat_template: bool = False,
    layers: Sequence[int] | None = None,
) -> str:
    """The ``Activations.fingerprint`` that ``extract`` would give, without running the model.

    Parameters mirror ``extract``; the fingerprint covers the model (name, config, sampled
    weights), the tokenizer, the texts, the pooling, ``max_length``, ``chat_template`` and
    the layer selection (not the batch size, device or output dtype).

    Examples
    --------
    >>> from layerknn.extract import fingerprint_for
    >>> from transformers import GPT2Config, GPT2Model
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> model = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    >>> class Tok:  # any tokenizer works; only its identity is hashed
    ...     name_or_path, bos_token_id, eos_token_id = "toy", None, None
    ...     def __len__(self): return 10
    >>> a = fingerprint_for(model, ["a", "b"], tokenizer=Tok())
    >>> a == fingerprint_for(model, ["a", "b"], tokenizer=Tok()), a == fingerprint_for(model, ["a"], tokenizer=Tok())
    (True, False)
    """
    texts = _check_texts(texts)
    pooling = check_pooling(pooling)
    max_length = _check_max_length(max_length)
    parts = find_model_parts(model)
    layer_list = _normalise_layers(layers, parts.num_layers)
    tokenizer = _resolve_tokenizer(model, tokenizer)
    return _fingerprint(model, tokenizer, texts, pooling, max_length, bool(chat_template), layer_list)


def _fingerprint(model, tokenizer, texts, pooling, max_length, chat_template, layer_list) -> str:
    payload = {
        "schema": _FINGERPRINT_SCHEMA,
        "model": _model_identity(model),
        "tokenizer": _tokenizer_identity(tokenizer, chat_template),
        "texts": _texts_digest(texts),
        "n": len(texts),
        "pooling": pooling,
        "max_length": max_length,
        "chat_template": chat_template,
        "layers": list(layer_list),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _check_texts(texts) -> list:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, got a single string; wrap it in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("texts must be a non-empty sequence of strings, got an empty sequence")
    bad_types = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad_types:
        raise TypeError(
            f"texts must all be str; items at indices {bad_types[:10]} are "
            f"{type(texts[bad_types[0]]).__name__}"
        )
    empty = [i for i, text in enumerate(texts) if text == ""]
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else "")
        raise ValueError(f"texts must be non-empty strings; {len(empty)} empty string(s) at indices {shown}")
    return texts


def _check_max_length(max_length):
    if max_length is None:
        return None
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    return int(max_length)


def _normalise_layers(layers, num_layers: int) -> list:
    if layers is None:
        return list(range(num_layers + 1))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    result = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layers must be ints in [0, {num_layers}], got {layer!r}")
        index = int(layer) + (num_layers + 1 if layer < 0 else 0)
        if not 0 <= index <= num_layers:
            raise ValueError(
                f"layers must be in [0, {num_layers}] (or [-{num_layers + 1}, -1]) for this "
                f"{num_layers}-block model, got {int(layer)}"
            )
        result.append(index)
    if not result:
        raise ValueError("layers must select at least one layer, got an empty list")
    if len(set(result)) != len(result):
        raise ValueError(f"layers must not repeat a layer, got {list(layers)}")
    return result


def _check_batch_size(batch_size):
    if batch_size == "auto":
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    return int(batch_size)


def _resolve_tokenizer(model, tokenizer):
    if tokenizer is not None:
        return tokenizer
    attached = getattr(model, "_layerknn_tokenizer", None)
    if attached is not None:
        return attached
    name = _model_name(model)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as error:
        raise ValueError(
            f"no tokenizer given and none could be loaded for {name!r} ({error}); "
            "pass tokenizer=..., or load the model with layerknn.load_model"
        ) from error


# --------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------


@dataclass
class _Encoded:
    ids: list  # list of lists of int, truncated
    truncated: list  # list of bool
    skip_first: list  # list of bool: position 0 is a tokenizer-inserted BOS/CLS
    max_length: int | None


def _effective_max_length(model, tokenizer, max_length):
    limits = [value for value in (max_positions_of(model), max_length) if value is not None]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _HUGE_LENGTH:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def _tokenize(texts, tokenizer, max_len, chat_template: bool) -> _Encoded:
    add_special = True
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for text in texts
        ]
        add_special = False  # the template already holds BOS etc.
    kwargs = dict(add_special_tokens=add_special, return_attention_mask=False, verbose=False)
    encoded = tokenizer(texts, return_special_tokens_mask=True, **kwargs)
    ids = [list(row) for row in encoded["input_ids"]]
    special = encoded.get("special_tokens_mask")
    truncated = [False] * len(ids)
    if max_len is not None:
        long_rows = [i for i, row in enumerate(ids) if len(row) > max_len]
        if long_rows:
            again = tokenizer(
                [texts[i] for i in long_rows],
                truncation=True,
                max_length=max_len,
                return_special_tokens_mask=True,
                **kwargs,
            )
            for position, i in enumerate(long_rows):
                ids[i] = list(again["input_ids"][position])
                if special is not None:
                    special[i] = again["special_tokens_mask"][position]
                truncated[i] = True
    zero = [i for i, row in enumerate(ids) if len(row) == 0]
    if zero:
        raise ValueError(f"texts at indices {zero[:20]} produce no tokens with this tokenizer")
    bos = getattr(tokenizer, "bos_token_id", None)
    skip_first = []
    for i, row in enumerate(ids):
        inserted = special is not None and len(special[i]) > 0 and bool(special[i][0])
        skip_first.append(bool(inserted or (bos is not None and row[0] == bos)))
    return _Encoded(ids=ids, truncated=truncated, skip_first=skip_first, max_length=max_len)


# --------------------------------------------------------------------------------------
# The forward pass with hooks
# --------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised inside a hook once the last needed layer is pooled (not a RuntimeError)."""


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise RuntimeError(f"cannot find the hidden states in a block output of type {type(output).__name__}")


class _HookSet:
    """Forward hooks writing each needed hidden state into the current batch's pooler."""

    def __init__(self, parts, layer_list):
        self.parts = parts
        self.slot_of = {layer: slot for slot, layer in enumerate(layer_list)}
        self.last_needed = max(layer_list)
        self.pooler: BatchPooler | None = None
        self.calls = [0] * len(layer_list)
        self.handles = []

    def _record(self, layer: int, hidden: torch.Tensor):
        slot = self.slot_of[layer]
        self.calls[slot] += 1
        self.pooler.write(slot, hidden)
        if layer == self.last_needed:
            raise _StopForward

    def install(self):
        parts, L = self.parts, self.parts.num_layers
        if 0 in self.slot_of:

            def first_input(module, args, kwargs):
                hidden = args[0] if args else kwargs.get("hidden_states")
                if not isinstance(hidden, torch.Tensor):
                    hidden = next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
                self._record(0, hidden)

            self.handles.append(parts.blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
        for block_index, block in enumerate(parts.blocks):
            layer = block_index + 1
            if layer not in self.slot_of or (layer == L and parts.last_from_stack):
                continue
            self.handles.append(
                block.register_forward_hook(lambda m, a, out, layer=layer: self._record(layer, _first_tensor(out)))
            )
        if L in self.slot_of and parts.last_from_stack:
            self.handles.append(
                parts.stack.register_forward_hook(lambda m, a, out: self._record(L, _first_tensor(out)))
            )

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def start_batch(self, pooler: BatchPooler):
        self.pooler = pooler
        self.calls = [0] * len(self.calls)

    def check_batch(self, model_name: str):
        if any(count != 1 for count in self.calls):
            raise RuntimeError(
                f"extraction hooks of {model_name} fired {self.calls} times per layer for one batch "
                "(expected once each); this architecture reuses or skips blocks and is not supported"
            )


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _batches(order, lengths, max_batch: int, token_budget: int | None, start: int):
    """Next batch: consecutive prompts from ``order[start:]`` within the size limits."""
    end = start
    longest = 0
    while end < len(order) and end - start < max_batch:
        longest = max(longest, lengths[order[end]])
        if token_budget is not None and end > start and longest * (end - start + 1) > token_budget:
            break
        end += 1
    return end


def extract(
    model,
    texts: Sequence[str],
    *,
    tokenizer=None,
    pooling: str = "last",
    layers: Sequence[int] | None = None,
    batch_size="auto",
    max_length: int | None = None,
    chat_template: bool = False,
    device=None,
    out_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Activations:
    """Pooled hidden states of every layer of ``model`` for each text.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any causal LM, encoder (BERT-like) or state-space model (Mamba); the headless base
        model is run, so logits are never computed. ``device_map="auto"`` models work.
    texts : sequence of str
        The prompts (non-empty strings; an empty string raises ValueError naming it).
    tokenizer : optional
        Defaults to the tokenizer ``layerknn.load_model`` attached, else
        ``AutoTokenizer.from_pretrained(model.name_or_path)``. A missing pad token is fine:
        batches are right-padded with any id and the attention mask excludes the pads.
    pooling : {"last", "mean", "mean_no_bos"}
        Last real token; mean over real tokens; or mean over real tokens leaving out a
        leading token the tokenizer inserts (BOS, or [CLS] for BERT-style tokenizers).
        A text whose only token is that BOS pools the BOS itself.
    layers : sequence of int, optional
        Hidden-state indices in ``0..L`` (negative counts from the end); default all
        ``L + 1``. The forward pass stops after the last one needed.
    batch_size : int or "auto"
        Prompts per forward pass. "auto" packs batches up to a token budget and halves
        it on out-of-memory instead of failing.
    max_length : int, optional
        Truncate texts to this many tokens (never more than the model's context). Texts
        that are cut are flagged in ``.truncated`` and one warning gives the count.
    chat_template : bool
        Wrap each text as a user turn of the tokenizer's chat template (with the
        generation prompt) before tokenising.
    device : optional
        Where ``values`` is stored; default the device of the input embeddings.
    out_dtype : torch.dtype
        dtype of ``values``; pooling always accumulates in float32.
    progress : bool
        Show a tqdm bar (prompts/s).

    Returns
    -------
    Activations

    Raises
    ------
    ValueError
        Empty ``texts``, an empty string (its indices are named: an empty prompt has no
        meaningful last token and would give some models nothing to pool), a text that
        tokenises to nothing, an unknown pooling, a layer outside ``0..L``, token ids the
        model's embedding cannot hold (tokenizer/model mismatch), or an architecture whose
        block list cannot be found.
    TypeError
        ``texts`` is a single string or holds non-strings.

    Notes
    -----
    Hidden-state index ``i`` is the input to block ``i`` for ``i < L`` and the model's
    final output for ``i = L``, matching ``output_hidden_states`` of every transformer
    family tested. HF's Mamba is the one exception: its ``hidden_states`` omit the
    embeddings and list the last block's output twice (raw, then normed); layerknn keeps
    the common convention there too (0 = embeddings, L = after the final norm).

    Examples
    --------
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from layerknn.extract import extract
    >>> class CharTokenizer:  # a toy tokenizer: one id per character
    ...     bos_token_id = eos_token_id = pad_token_id = None
    ...     name_or_path, model_max_length = "chars", 64
    ...     def __len__(self): return 128
    ...     def __call__(self, texts, **kwargs):
    ...         return {"input_ids": [[ord(c) % 128 for c in t] for t in texts]}
    >>> torch.manual_seed(0) and None
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=128)).eval()
    >>> acts = extract(model, ["hello", "a longer prompt"], tokenizer=CharTokenizer(),
    ...                pooling="mean", progress=False)
    >>> acts.values.shape, acts.token_counts.tolist()
    (torch.Size([3, 2, 16]), [5, 15])
    """
    texts = _check_texts(texts)
    pooling = check_pooling(pooling)
    max_length = _check_max_length(max_length)
    batch_size = _check_batch_size(batch_size)
    parts = find_model_parts(model)
    num_layers = parts.num_layers
    layer_list = _normalise_layers(layers, num_layers)
    tokenizer = _resolve_tokenizer(model, tokenizer)
    chat_template = bool(chat_template)
    hidden_size = hidden_size_of(model)

    max_len = _effective_max_length(model, tokenizer, max_length)
    encoded = _tokenize(texts, tokenizer, max_len, chat_template)
    n = len(texts)
    rows_limit = embedding_rows(model)
    vocabulary = _tokenizer_size(tokenizer)
    if rows_limit is not None and vocabulary is not None and vocabulary > rows_limit:
        raise ValueError(
            f"the tokenizer has {vocabulary} tokens but the model's input embedding has only {rows_limit} "
            "rows: tokenizer and model do not match"
        )
    if rows_limit is not None:
        largest = max(max(row) for row in encoded.ids)
        smallest = min(min(row) for row in encoded.ids)
        if largest >= rows_limit or smallest < 0:
            raise ValueError(
                f"the tokenizer produced token id {largest if largest >= rows_limit else smallest} but the "
                f"model's input embedding has {rows_limit} rows: tokenizer and model do not match"
            )
    n_truncated = sum(encoded.truncated)
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {n} texts were longer than {max_len} tokens and were truncated "
            "(see Activations.truncated)",
            stacklevel=2,
        )

    fingerprint = _fingerprint(model, tokenizer, texts, pooling, max_length, chat_template, layer_list)
    input_device = input_embedding_device(model)
    out_device = torch.device(device) if device is not None else input_device
    values = torch.empty((len(layer_list), n, hidden_size), dtype=out_dtype, device=out_device)

    lengths = [len(row) for row in encoded.ids]
    order = sorted(range(n), key=lambda i: (-lengths[i], i))  # longest first: OOM shows early
    pad_id = _pad_id(tokenizer)
    accepts = set(inspect.signature(parts.base.forward).parameters)
    takes_kwargs = any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(parts.base.forward).parameters.values()
    )
    pass_mask = "attention_mask" in accepts
    call_kwargs = {"use_cache": False} if ("use_cache" in accepts or takes_kwargs) else {}

    if batch_size == "auto":
        on_gpu = input_device.type == "cuda"
        max_batch, token_budget = (256, 131072) if on_gpu else (32, 8192)
    else:
        max_batch, token_budget = batch_size, None

    hooks = _HookSet(parts, layer_list)
    was_training = model.training
    model.eval()
    hooks.install()
    name = _model_name(model)
    try:
        from tqdm.auto import tqdm

        with tqdm(total=n, unit="prompt", desc="extract", disable=not progress) as bar, torch.inference_mode():
            start = 0
            while start < n:
                end = _batches(order, lengths, max_batch, token_budget, start)
                if not pass_mask:  # without a mask only equal-length prompts may share a batch
                    while end > start + 1 and lengths[order[end - 1]] != lengths[order[start]]:
                        end -= 1
                batch_rows = order[start:end]
                try:
                    _run_batch(parts, hooks, encoded, batch_rows, values, pooling, pad_id, input_device,
                               pass_mask, call_kwargs)
                except Exception as error:
                    if batch_size != "auto" or not _is_out_of_memory(error) or (max_batch == 1):
                        if _is_out_of_memory(error):
                            raise RuntimeError(
                                f"out of memory extracting a batch of {len(batch_rows)} prompts of up to "
                                f"{lengths[batch_rows[0]]} tokens; use batch_size='auto' or a smaller "
                                "batch_size / max_length"
                            ) from error
                        raise
                    del error
                    max_batch = max(1, min(max_batch, len(batch_rows)) // 2)
                    token_budget = max(1, token_budget // 2) if token_budget else None
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                hooks.check_batch(name)
                bar.update(len(batch_rows))
                start = end
    finally:
        hooks.remove()
        if was_training:
            model.train()

    return Activations(
        values=values,
        layers=tuple(layer_list),
        model_name=name,
        num_layers=num_layers,
        hidden_size=hidden_size,
        pooling=pooling,
        token_counts=torch.tensor(lengths, dtype=torch.int64),
        truncated=torch.tensor(encoded.truncated, dtype=torch.bool),
        fingerprint=fingerprint,
        max_length=max_len,
        chat_template=chat_template,
    )


def _tokenizer_size(tokenizer) -> int | None:
    try:
        return int(len(tokenizer))
    except TypeError:
        return None


def _pad_id(tokenizer) -> int:
    for attribute in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            return value
    return 0  # any valid id works: the attention mask hides pads and pooling skips them


def _run_batch(parts, hooks, encoded, batch_rows, values, pooling, pad_id, input_device, pass_mask, call_kwargs):
    batch_lengths = [len(encoded.ids[i]) for i in batch_rows]
    width = max(batch_lengths)
    input_ids = torch.full((len(batch_rows), width), pad_id, dtype=torch.long)
    for b, i in enumerate(batch_rows):
        input_ids[b, : batch_lengths[b]] = torch.tensor(encoded.ids[i], dtype=torch.long)
    counts = torch.tensor(batch_lengths, dtype=torch.long)
    kwargs = dict(call_kwargs)
    if pass_mask:
        mask = (torch.arange(width)[None, :] < counts[:, None]).to(torch.long)
        kwargs["attention_mask"] = mask.to(input_device)
    pooler = BatchPooler(
        values,
        torch.tensor(batch_rows, dtype=torch.long),
        counts,
        torch.tensor([encoded.skip_first[i] for i in batch_rows], dtype=torch.bool),
        pooling,
    )
    hooks.start_batch(pooler)
    try:
        parts.base(input_ids=input_ids.to(input_device), **kwargs)
    except _StopForward:
        pass


# ``layerknn/__init__.py`` re-exports the function ``extract``, which shadows this module as
# the package attribute ``layerknn.extract``; these aliases keep the module-style spellings
# ``layerknn.extract.fingerprint_for`` / ``.Activations`` / ``.extract`` working on it.
extract.fingerprint_for = fingerprint_for
extract.Activations = Activations
extract.extract = extract
