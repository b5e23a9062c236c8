"""Find the pieces of a transformers model that activation extraction hooks into.

For any Hugging Face model we need three things: the module to call (the base model, so
no language-model head or logits are ever computed), the ``nn.ModuleList`` of blocks whose
inputs/outputs are the hidden states, and the "stack" module that owns that list, whose
output (``last_hidden_state``) is what ``output_hidden_states`` reports as the final entry
(after the final norm where the family has one). A short table covers common families; a
generic search covers the rest, and a clear error names the model class when both fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Attribute paths (relative to the base model) of the block list for common families.
_KNOWN_BLOCK_PATHS = (
    "layers",  # llama, mistral, qwen2/3, gemma*, phi3, gpt_neox, mamba, ...
    "h",  # gpt2, falcon, bloom, gptj, codegen
    "decoder.layers",  # opt
    "encoder.layer",  # bert, roberta, electra, ...
    "model.layers",  # wrappers that nest one more level
    "transformer.h",
    "transformer.layers",
    "blocks",
    "layer",
)


@dataclass
class ModelParts:
    """The pieces of a model that extraction needs.

    Attributes
    ----------
    base : nn.Module
        The module to call with ``input_ids`` / ``attention_mask`` (never the LM head).
    blocks : nn.ModuleList
        The repeated blocks, in forward order; ``len(blocks)`` is the layer count L.
    stack : nn.Module
        The module owning ``blocks``; its output's ``last_hidden_state`` is hidden state L.
    last_from_stack : bool
        True when hidden state L is the stack's output (after the final norm, as HF's
        ``hidden_states[-1]``); False when the model reports the raw last block output.
    """

    base: nn.Module
    blocks: nn.ModuleList
    stack: nn.Module
    last_from_stack: bool

    @property
    def num_layers(self) -> int:
        return len(self.blocks)


def _get_path(module: nn.Module, path: str):
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _expected_num_layers(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def base_model_of(model: nn.Module) -> nn.Module:
    """Return the headless base model (``model.base_model`` for HF models), else ``model``."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _search_block_list(base: nn.Module, expected: int | None) -> tuple[str, nn.ModuleList] | None:
    """Generic fallback: the largest ModuleList of same-class modules (matching L if known)."""
    best = None
    for name, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if expected is not None and len(module) != expected:
            continue
        # Prefer the shallowest, then the longest list.
        key = (-name.count("."), len(module))
        if best is None or key > best[0]:
            best = (key, name, module)
    return None if best is None else (best[1], best[2])


def find_model_parts(model: nn.Module) -> ModelParts:
    """Locate the base model, block list and stack module of ``model``.

    Raises
    ------
    ValueError
        If no block list can be found; the message names the model class.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model), a TransformerLens model or an "
                        f"nnsight LanguageModel, got {type(model).__name__}")
    base = base_model_of(model)
    config = getattr(model, "config", None)
    expected = _expected_num_layers(config) if config is not None else None

    found = None
    for path in _KNOWN_BLOCK_PATHS:
        candidate = _get_path(base, path)
        if isinstance(candidate, nn.ModuleList) and len(candidate) > 0:
            if expected is None or len(candidate) == expected:
                found = (path, candidate)
                break
    if found is None:
        found = _search_block_list(base, expected)
    if found is None:
        raise ValueError(
            f"cannot find the list of transformer blocks in {type(model).__name__} "
            f"(base model {type(base).__name__}): expected an nn.ModuleList of "
            f"{expected if expected is not None else 'L'} blocks at one of "
            f"{', '.join(_KNOWN_BLOCK_PATHS)}; this architecture is not supported by layerknn.extract"
        )
    path, blocks = found
    stack = base if "." not in path else _get_path(base, path.rsplit(".", 1)[0])
    tie_last = getattr(config, "tie_last_hidden_states", None) if config is not None else None
    return ModelParts(base=base, blocks=blocks, stack=stack, last_from_stack=tie_last is not False)


def input_embedding_device(model: nn.Module) -> torch.device:
    """Device of the input embedding matrix (where input ids must go)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if embeddings is not None:
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
    for parameter in model.parameters():
        if parameter.device.type != "meta":  # accelerate-offloaded weights live on "meta"
            return parameter.device
    return torch.device("cpu")


def embedding_rows(model: nn.Module) -> int | None:
    """Number of rows of the input embedding matrix (the largest valid token id + 1)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if embeddings is None:
        return None
    num = getattr(embeddings, "num_embeddings", None)
    if isinstance(num, int):
        return num
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def hidden_size_of(model: nn.Module) -> int:
    """Hidden size d from the config, else from the input embedding width."""
    config = getattr(model, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(text_config, key, None)
            if isinstance(value, int) and value > 0:
                return value
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if embeddings is not None and isinstance(getattr(embeddings, "weight", None), torch.Tensor):
        return int(embeddings.weight.shape[1])
    raise ValueError(f"cannot determine the hidden size of {type(model).__name__}")


def max_positions_of(model: nn.Module) -> int | None:
    """The model's maximum sequence length, or None when it has none (e.g. Mamba)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
