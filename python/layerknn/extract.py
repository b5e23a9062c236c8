"""Pooled per-layer activations of a language model over a list of texts.

``extract`` tokenises the texts, sorts them by length into right-padded batches, and runs
the headless base model with forward hooks on its block list; each hook pools its batch
(last token / mean / mean without BOS) straight into a preallocated ``(layers, n, d)``
buffer, and the pass stops after the last layer needed, so no logits and no full hidden
states are ever kept. The result (``Activations``, in activations.py) matches pooling HF's
per-prompt ``output_hidden_states``; ``fingerprint_for`` gives its cache key up front.
Helpers: tokenisation and padding (_encoding.py), the hooks (_hooks.py), the batch plan
(_batching.py) and resumable batches (_checkpoint.py).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ._batching import Planner, is_out_of_memory
from ._blocks import embedding_rows, find_model_parts, hidden_size_of, input_embedding_device
from ._checkpoint import ResumeDir, check_resume_dir, remove_resume_files, run_digest
from ._encoding import batch_inputs, check_token_ids, effective_max_length, tokenize
from ._hooks import HookSet, StopForward
from ._identity import _fingerprint, _model_name, _tokenizer_size
from ._lens import LensParts, is_lens_model, unwrap_nnsight
from ._pooling import BatchPooler, check_pooling
from .activations import Activations

__all__ = ["Activations", "extract", "fingerprint_for", "remove_resume_files"]


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

        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)  # never prompts on stdin
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
    model, parts, tokenizer = _model_parts(model, tokenizer)
    layer_list = _normalise_layers(layers, parts.num_layers)
    return _fingerprint(model, tokenizer, texts, pooling, max_length, bool(chat_template), layer_list,
                        backend=parts.identity() if isinstance(parts, LensParts) else None)


def _model_parts(model, tokenizer):
    """``(model, parts, tokenizer)``: nnsight models unwrapped, TransformerLens models as ``LensParts``."""
    model, tokenizer = unwrap_nnsight(model, tokenizer)
    if is_lens_model(model):
        parts = LensParts(model)
        if tokenizer is not None and tokenizer is not parts.tokenizer:
            raise ValueError("tokenizer must be None for a TransformerLens model: it tokenises with its own "
                             "(model.to_tokens); set another with model.set_tokenizer(...)")
        return model, parts, parts.tokenizer
    parts = find_model_parts(model)
    return model, parts, _resolve_tokenizer(model, tokenizer)


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
    resume_dir=None,
) -> Activations:
    """Pooled hidden states of every layer of ``model`` for each text.

    Parameters
    ----------
    model : transformers.PreTrainedModel, TransformerLens model or nnsight LanguageModel
        Any causal LM, encoder (BERT-like) or state-space model (Mamba); the headless base
        model is run, so logits are never computed. ``device_map="auto"`` models work. An
        nnsight model is extracted as the HF model it wraps. A TransformerLens
        ``HookedTransformer`` / ``TransformerBridge`` is read through TL's hooks
        (``blocks.0.hook_resid_pre``, then each ``blocks.{i}.hook_resid_post``, the last one
        through ``ln_final``) and tokenises with its own ``to_tokens`` (``tokenizer`` must be None).
    texts : sequence of str
        The prompts (non-empty strings; an empty string raises ValueError naming it).
    tokenizer : optional
        Defaults to the tokenizer ``layerknn.load_model`` attached, else
        ``AutoTokenizer.from_pretrained(model.name_or_path)``. A missing pad token is fine:
        batches are right-padded with any id and the attention mask excludes the pads.
        Every tokenizer output the model's forward takes by name (``token_type_ids``, ...)
        is passed on, right-padded the same way, so the values equal pooling
        ``model(**tokenizer(text), output_hidden_states=True)`` prompt by prompt.
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
    resume_dir : str or path, optional
        Keep each finished batch in this directory (one small checksummed file per
        batch, written atomically), so an interrupted run, called again with the same
        arguments, computes only the missing batches and gives the same values bit for
        bit. Files of another extraction are never used; a corrupt or mismatching file
        is named in a warning, deleted and recomputed. The files stay after success:
        ``remove_resume_files(resume_dir)`` deletes them once the result is saved.

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
    model, parts, tokenizer = _model_parts(model, tokenizer)
    lens = parts if isinstance(parts, LensParts) else None
    num_layers = parts.num_layers
    layer_list = _normalise_layers(layers, num_layers)
    chat_template = bool(chat_template)
    hidden_size = lens.hidden_size if lens else hidden_size_of(model)

    resume_path = check_resume_dir(resume_dir)
    if lens:
        accepts, takes_kwargs = {"attention_mask"}, False
        max_len = min((v for v in (lens.max_positions, max_length) if v is not None), default=None)
        encoded = lens.tokenize(texts, max_len, chat_template)
        check_token_ids(encoded, lens.vocabulary, None)
    else:
        parameters = inspect.signature(parts.base.forward).parameters
        accepts = set(parameters)
        takes_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        max_len = effective_max_length(model, tokenizer, max_length)
        encoded = tokenize(texts, tokenizer, max_len, chat_template, forward_names=accepts)
        check_token_ids(encoded, embedding_rows(model), _tokenizer_size(tokenizer))
    n = len(texts)
    n_truncated = sum(encoded.truncated)
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {n} texts were longer than {max_len} tokens and were truncated "
            "(see Activations.truncated)",
            stacklevel=2,
        )

    fingerprint = _fingerprint(model, tokenizer, texts, pooling, max_length, chat_template, layer_list,
                               backend=lens.identity() if lens else None)
    input_device = lens.input_device() if lens else input_embedding_device(model)
    out_device = torch.device(device) if device is not None else input_device
    values = torch.empty((len(layer_list), n, hidden_size), dtype=out_dtype, device=out_device)

    lengths = [len(row) for row in encoded.ids]
    order = sorted(range(n), key=lambda i: (-lengths[i], i))  # longest first: OOM shows early
    pass_mask = "attention_mask" in accepts
    call_kwargs = {"use_cache": False} if ("use_cache" in accepts or takes_kwargs) else {}
    planner = Planner([lengths[i] for i in order], batch_size, on_gpu=input_device.type == "cuda",
                      equal_widths_only=not pass_mask)  # without a mask only equal lengths may share a batch
    resume = None
    if resume_path is not None:
        digest = run_digest(fingerprint, out_dtype=out_dtype, batch_size=batch_size, device_type=input_device.type)
        resume = ResumeDir(resume_path, digest, out_dtype)

    hooks = lens.hooks(layer_list) if lens else HookSet(parts, layer_list)
    was_training = model.training
    model.eval()
    hooks.install()
    name = lens.name if lens else _model_name(model)
    forward = lens.forward if lens else (lambda inputs: parts.base(**inputs, **call_kwargs))
    batch = _BatchRunner(forward, hooks, encoded, values, pooling, _pad_id(tokenizer), input_device, pass_mask, name)
    try:
        from tqdm.auto import tqdm

        with tqdm(total=n, unit="prompt", desc="extract", disable=not progress) as bar, torch.inference_mode():
            _run_plan(planner, batch, order, lengths, encoded.truncated, resume, bar)
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


def _run_plan(planner, batch, order, lengths, truncated, resume, bar) -> None:
    """Run (or, with ``resume``, restore) every batch of the plan in order, backing off on OOM."""
    n = len(order)
    start = 0
    ends = planner.plan(start)
    while start < n:
        end = ends[0]
        restored = None if resume is None else _restore(resume, batch.values, order, lengths, truncated, start, end)
        if restored is not None:  # replay the stored schedule from here on
            bar.update(restored[0] - start)
            start, ends = restored[0], restored[1]
            planner.set_limits(*restored[2])
            continue
        rows = order[start:end]
        try:
            batch.run(rows)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if not planner.back_off(len(rows)):
                raise RuntimeError(
                    f"out of memory extracting a batch of {len(rows)} prompts of up to {lengths[rows[0]]} "
                    "tokens; use batch_size='auto' or a smaller batch_size / max_length"
                ) from error
            del error
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            ends = planner.plan(start)
            continue
        if resume is not None:
            resume.save(start, end, rows, batch.values, [lengths[i] for i in rows], [truncated[i] for i in rows],
                        ends[1:], planner.limits())
        bar.update(len(rows))
        start = end
        ends = ends[1:]


def _restore(resume, values, order, lengths, truncated, start, planned_end):
    """Copy a stored batch that begins at ``start`` (the planned one first) into ``values``.

    Returns ``(end, remaining plan, planner limits)`` stored with it, or None.
    """
    for end in sorted(resume.ends_at(start), key=lambda e: e != planned_end):
        rows = order[start:end]
        stored = resume.load(start, end, rows, [lengths[i] for i in rows], [truncated[i] for i in rows],
                             (values.shape[0], len(rows), values.shape[2]), len(order))
        if stored is not None:
            values.index_copy_(1, torch.tensor(rows, device=values.device), stored[0].to(values.device))
            return end, stored[1], stored[2]
    return None


def _pad_id(tokenizer) -> int:
    for attribute in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            return value
    return 0  # any valid id works: the attention mask hides pads and pooling skips them


class _BatchRunner:
    """One forward pass over some rows, pooling the hooked layers into ``values``."""

    def __init__(self, forward, hooks, encoded, values, pooling, pad_id, input_device, pass_mask, model_name):
        self.forward, self.hooks, self.encoded, self.values = forward, hooks, encoded, values
        self.pooling, self.pad_id, self.input_device = pooling, pad_id, input_device
        self.pass_mask, self.model_name = pass_mask, model_name

    def run(self, rows) -> None:
        inputs, counts = batch_inputs(self.encoded, rows, self.pad_id, self.input_device, self.pass_mask)
        skip_first = torch.tensor([self.encoded.skip_first[i] for i in rows], dtype=torch.bool)
        pooler = BatchPooler(self.values, torch.tensor(rows, dtype=torch.long), counts, skip_first, self.pooling)
        self.hooks.start_batch(pooler)
        try:
            self.forward(inputs)
        except StopForward:
            pass
        self.hooks.check_batch(self.model_name)
