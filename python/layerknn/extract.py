"""Pooled per-layer activations of a language model over a list of texts.

``extract`` tokenises the texts, sorts them by length into right-padded batches, and runs
the headless base model with forward hooks on its block list; each hook pools its batch
(last token / mean / mean without BOS) straight into a preallocated ``(layers, n, d)``
buffer, and the pass stops after the last layer needed, so no logits and no full hidden
states are ever kept. The result (``Activations``, in activations.py) matches pooling HF's
per-prompt ``output_hidden_states``; ``fingerprint_for`` gives its cache key up front.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
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
from ._identity import _fingerprint, _model_name, _tokenizer_size
from ._pooling import BatchPooler, check_pooling
from .activations import Activations

__all__ = ["Activations", "extract", "fingerprint_for"]

# Tokenizers report "no limit" as a huge model_max_length; ignore values above this.
_HUGE_LENGTH = 10**7


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
    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5
    if isinstance(error, out_of_memory):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _plan_batches(widths, max_batch: int, token_budget: int | None, overhead_tokens: float,
                  equal_widths_only: bool = False) -> list:
    """End index of each batch that splits prompts sorted longest-first with the least work.

    ``widths`` are the prompts' token counts in batch order (non-increasing). A batch of
    rows ``[i, j)`` is padded to ``widths[i]``, so it costs ``(j - i) * widths[i]`` tokens
    plus a fixed ``overhead_tokens`` per forward pass (Python, reading every weight once).
    Dynamic programming over the split points minimises the total; a batch holds at most
    ``max_batch`` rows and ``token_budget`` padded tokens (a lone prompt always fits).
    """
    widths = np.asarray(widths, dtype=np.float64)
    n = len(widths)
    best = np.zeros(n + 1)  # best[j]: least cost of the first j prompts
    first = np.zeros(n + 1, dtype=np.int64)  # first row of the last batch in that plan
    for j in range(1, n + 1):
        lo = max(0, j - max_batch)
        rows = np.arange(j - lo, 0, -1)  # batch sizes j - i for i = lo .. j-1
        padded = rows * widths[lo:j]
        cost = best[lo:j] + overhead_tokens + padded
        if token_budget is not None:
            cost[(padded > token_budget) & (rows > 1)] = np.inf
        if equal_widths_only:
            cost[widths[lo:j] != widths[j - 1]] = np.inf
        k = int(np.argmin(cost))
        best[j], first[j] = cost[k], lo + k
    ends = []
    j = n
    while j > 0:
        ends.append(j)
        j = int(first[j])
    return ends[::-1]


def _fixed_batches(widths, batch_size: int, equal_widths_only: bool = False) -> list:
    """End index of each batch of ``batch_size`` consecutive prompts (cut where widths change if asked)."""
    ends, start = [], 0
    while start < len(widths):
        end = min(start + batch_size, len(widths))
        while equal_widths_only and widths[end - 1] != widths[start]:
            end -= 1
        ends.append(end)
        start = end
    return ends


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
        Prompts per forward pass. "auto" splits the length-sorted prompts into batches
        that trade padding against the number of forward passes, within a token budget,
        and halves that budget on out-of-memory instead of failing.
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
    equal_widths_only = not pass_mask  # without a mask only equal-length prompts may share a batch
    call_kwargs = {"use_cache": False} if ("use_cache" in accepts or takes_kwargs) else {}

    if batch_size == "auto":
        on_gpu = input_device.type == "cuda"
        # CPU: up to ~2k tokens per batch keeps activations cache-friendly (measured on
        # smollm2), and each forward pass costs about as much as ~32 more tokens, which the
        # plan trades against padding. GPUs want big batches and back off on OOM.
        max_batch, token_budget = (256, 131072) if on_gpu else (32, 2048)
        overhead_tokens = 4096.0 if on_gpu else 32.0
    else:
        max_batch, token_budget, overhead_tokens = batch_size, None, None

    hooks = _HookSet(parts, layer_list)
    was_training = model.training
    model.eval()
    hooks.install()
    name = _model_name(model)
    try:
        from tqdm.auto import tqdm

        with tqdm(total=n, unit="prompt", desc="extract", disable=not progress) as bar, torch.inference_mode():
            widths = [lengths[i] for i in order]

            def plan(start):
                if overhead_tokens is None:
                    ends = _fixed_batches(widths[start:], max_batch, equal_widths_only)
                else:
                    ends = _plan_batches(widths[start:], max_batch, token_budget, overhead_tokens, equal_widths_only)
                return iter([start + end for end in ends])

            start = 0
            ends = plan(start)
            while start < n:
                end = next(ends)
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
                    ends = plan(start)
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

