"""Models from the interpretability ecosystem: TransformerLens and nnsight, as extraction inputs.

An nnsight ``LanguageModel`` (or any nnsight model wrapping a torch module) is unwrapped to the
Hugging Face model it holds, with its tokenizer, and extracted like that model. A TransformerLens
model (``HookedTransformer``, TL < 4; ``TransformerBridge``, TL >= 3) is read through TL's own
hook points, registered with its ``hooks()`` context: hidden state 0 is
``blocks.0.hook_resid_pre``, state ``i`` is ``blocks.{i-1}.hook_resid_post`` and state ``L`` is
the final norm ``ln_final`` applied to the last block's output (what TL feeds the unembedding),
so index 0 = embeddings and L = after the final norm, as for Hugging Face models. Texts are
tokenised as TL does (``model.to_tokens``: a BOS prepended by default), then right-padded with
an attention mask; the pass stops after the last layer needed. Neither library is imported here.
"""

from __future__ import annotations

import torch

from ._encoding import Encoded
from ._hooks import StopForward


def unwrap_nnsight(model, tokenizer):
    """``(HF model, tokenizer)`` for an nnsight model; ``(model, tokenizer)`` unchanged otherwise."""
    if not type(model).__module__.startswith("nnsight"):
        return model, tokenizer
    if getattr(model, "dispatched", True) is False:  # loaded lazily on the meta device
        model.dispatch()
    module = _wrapped_module(model)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"cannot find the torch model inside the nnsight {type(model).__name__} "
                        "(expected a torch.nn.Module at ._module, or ._model in older nnsight)")
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    return module, tokenizer


def _wrapped_module(model):
    for attribute in ("_module", "_model"):  # nnsight 0.8 / older releases
        try:
            module = getattr(model, attribute)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Module):
            return module
    return None


def is_lens_model(model) -> bool:
    """Whether ``model`` is a TransformerLens model (HookedTransformer or TransformerBridge)."""
    if not type(model).__module__.startswith("transformer_lens"):
        return False
    cfg = getattr(model, "cfg", None)
    return callable(getattr(model, "hooks", None)) and hasattr(cfg, "n_layers") and hasattr(cfg, "d_model")


class LensParts:
    """What extraction needs of a TransformerLens model: sizes, tokens, hooks and a forward pass."""

    def __init__(self, model):
        self.model = model
        cfg = model.cfg
        self.num_layers = int(cfg.n_layers)
        self.hidden_size = int(cfg.d_model)
        self.vocabulary = int(cfg.d_vocab) if getattr(cfg, "d_vocab", None) else None
        n_ctx = getattr(cfg, "n_ctx", None)
        self.max_positions = int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None
        self.name = str(getattr(cfg, "model_name", "") or type(model).__name__)
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"the TransformerLens model {self.name!r} has no tokenizer; set one with "
                             "model.set_tokenizer(...) (extraction tokenises as model.to_tokens does)")
        self.tokenizer = tokenizer

    def input_device(self) -> torch.device:
        embed = getattr(self.model, "embed", None)
        parameters = embed.parameters() if isinstance(embed, torch.nn.Module) else self.model.parameters()
        for parameter in parameters:
            return parameter.device
        return torch.device("cpu")

    def identity(self) -> dict:
        """The model's TL config as a dict (hashed into the fingerprint)."""
        cfg = self.model.cfg
        to_dict = getattr(cfg, "to_dict", None)
        fields = to_dict() if callable(to_dict) else dict(vars(cfg))
        return {key: value for key, value in fields.items() if key not in ("device", "n_devices")}

    def tokenize(self, texts, max_len, chat_template: bool) -> Encoded:
        """Token rows as ``model.to_tokens(text)`` gives them, cut to ``max_len`` tokens."""
        tokenizer, to_tokens = self.tokenizer, self.model.to_tokens
        if chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("chat_template=True but the tokenizer has no chat template")
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                   add_generation_prompt=True) for text in texts]
        extra = {"prepend_bos": False} if chat_template else {}  # the template holds the BOS
        ids = [to_tokens(text, truncate=False, move_to_device=False, **extra)[0].tolist() for text in texts]
        zero = [i for i, row in enumerate(ids) if len(row) == 0]
        if zero:
            raise ValueError(f"texts at indices {zero[:20]} produce no tokens with this tokenizer")
        truncated = [max_len is not None and len(row) > max_len for row in ids]
        ids = [row[:max_len] if cut else row for row, cut in zip(ids, truncated)]
        bos = getattr(tokenizer, "bos_token_id", None)
        skip_first = [bos is not None and row[0] == bos for row in ids]
        return Encoded(ids=ids, truncated=truncated, skip_first=skip_first, max_length=max_len)

    def hooks(self, layer_list) -> LensHooks:
        return LensHooks(self.model, layer_list, self.num_layers)

    def forward(self, inputs: dict) -> None:
        self.model(inputs["input_ids"], return_type=None, attention_mask=inputs["attention_mask"])


class LensHooks:
    """TL hooks (one ``model.hooks()`` context) writing each needed state into the batch's pooler."""

    def __init__(self, model, layer_list, num_layers: int):
        self.model, self.num_layers = model, num_layers
        self.slot_of = {layer: slot for slot, layer in enumerate(layer_list)}
        self.last_needed = max(layer_list)
        self.pooler = None
        self.calls = [0] * len(layer_list)
        self._context = None
        try:
            final_norm = model.ln_final
        except AttributeError:  # no final norm (TL's normalization_type=None)
            final_norm = None
        self.final_norm = final_norm if isinstance(final_norm, torch.nn.Module) else None

    def _hook(self, layer: int):
        def record(tensor, hook):
            if layer == self.num_layers and self.final_norm is not None:
                tensor = self.final_norm(tensor)
            slot = self.slot_of[layer]
            self.calls[slot] += 1
            self.pooler.write(slot, tensor)
            if layer == self.last_needed:
                raise StopForward
        return record

    def install(self):
        names = {layer: "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
                 for layer in self.slot_of}
        self._context = self.model.hooks(fwd_hooks=[(names[layer], self._hook(layer)) for layer in self.slot_of])
        self._context.__enter__()

    def remove(self):
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def start_batch(self, pooler):
        self.pooler = pooler
        self.calls = [0] * len(self.calls)

    def check_batch(self, model_name: str):
        if any(count != 1 for count in self.calls):
            raise RuntimeError(f"TransformerLens hooks of {model_name} fired {self.calls} times per layer for one "
                               "batch (expected once each)")
