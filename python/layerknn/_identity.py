"""Stable identities of models, tokenizers and text lists, hashed into extraction fingerprints.

A fingerprint must change whenever the extracted numbers could: the model (its name, its
config, and a cheap digest of sampled parameter values, so two random tiny models differ),
the tokenizer, the texts and every extraction option that affects values. It must not
change with batch size, device or run. Everything here is cheap enough to run before
extraction, so a cache can be consulted without running the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

# v2: extraction forwards every tokenizer output the model takes (token_type_ids, ...).
_FINGERPRINT_SCHEMA = "layerknn-extract-v2"


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


def _fingerprint(model, tokenizer, texts, pooling, max_length, chat_template, layer_list, backend=None) -> str:
    """``backend``: a dict naming a non-HF model's own config (TransformerLens), hashed in when given."""
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
    if backend is not None:
        payload["backend"] = hashlib.sha256(json.dumps(backend, sort_keys=True, default=str).encode()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tokenizer_size(tokenizer) -> int | None:
    try:
        return len(tokenizer)
    except TypeError:
        return None
