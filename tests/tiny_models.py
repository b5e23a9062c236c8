"""Tiny random Hugging Face models and a character-level tokenizer, built offline.

The extraction tests need many architectures but no downloads: each builder here makes a
2-layer, 32-wide model of one family straight from its config (random weights, seeded),
paired with a tokenizer made in memory from a printable-ASCII vocabulary. Tokenizer styles
mimic the real conventions: a leading BOS (Llama-like), none at all and no pad token
(GPT-2-like), or [CLS] ... [SEP] with a pad token (BERT-like).
"""

from __future__ import annotations

import torch

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "[CLS]", "[SEP]"]
VOCAB_SIZE = 128  # model vocab; the tokenizer uses the first len(SPECIALS) + 95 ids


def char_tokenizer(style: str = "bos", model_max_length: int | None = None):
    """A character-level fast tokenizer.

    style: "bos" (prepends <bos>, has no pad token), "plain" (no special tokens, no pad
    token: GPT-2-like), or "bert" ([CLS] text [SEP], pad token <pad>).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + [chr(c) for c in range(32, 127)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    kwargs = dict(unk_token="<unk>", eos_token="<eos>")
    if style == "bos":
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
        kwargs["bos_token"] = "<bos>"
    elif style == "bert":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        kwargs.update(cls_token="[CLS]", sep_token="[SEP]", pad_token="<pad>")
    elif style != "plain":
        raise ValueError(f"unknown tokenizer style {style!r}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def _common(**extra):
    base = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=0, bos_token_id=2, eos_token_id=3)
    base.update(extra)
    return base


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=2, eos_token_id=3)
    return GPT2LMHeadModel(config), "plain"


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_common())), "bos"


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_common())), "bos"


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_common())), "plain"


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**_common(head_dim=8))), "plain"


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**_common(head_dim=8, sliding_window=16))), "bos"


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(**_common(head_dim=8, sliding_window=16, num_hidden_layers=3,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]))
    return Gemma3ForCausalLM(config), "bos"


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**_common())), "bos"


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=256, bos_token_id=2, eos_token_id=3)
    return GPTNeoXForCausalLM(config), "plain"


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=VOCAB_SIZE, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=256,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return OPTForCausalLM(config), "bos"


def _falcon():
    from transformers import FalconConfig, FalconForCausalLM

    config = FalconConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=256, bos_token_id=2, eos_token_id=3)
    return FalconForCausalLM(config), "plain"


def _bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256, pad_token_id=0)
    return BertModel(config, add_pooling_layer=False), "bert"


def _mamba():
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, state_size=4, num_hidden_layers=2,
                         expand=2, conv_kernel=4, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return MambaForCausalLM(config), "plain"


FAMILIES = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "falcon": _falcon,
    "bert": _bert,
    "mamba": _mamba,
}


def build(family: str, seed: int = 0):
    """Return ``(model, tokenizer)`` for ``family`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    model, style = FAMILIES[family]()
    # Larger-than-default init so layers differ clearly from each other.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
    model.eval()
    return model, char_tokenizer(style)


def save_models(root, families_and_seeds) -> list[str]:
    """Build and save each ``(family, seed)`` model with its tokenizer under ``root/<family>``; their paths."""
    paths = []
    for family, seed in families_and_seeds:
        model, tokenizer = build(family, seed)
        model.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        paths.append(str(root / family))
    return paths


def assert_same_zoo(a, b) -> None:
    """Two zoos agree bit for bit: names, layers, matrix, neighbour lists, intervals and p-values."""
    import numpy as np

    assert a.names == b.names and a.num_layers == b.num_layers and (a.n, a.k) == (b.n, b.k)
    assert np.array_equal(a.matrix, b.matrix)
    for x, y in zip(a.neighbors, b.neighbors):
        assert np.array_equal(x, y)
    assert sorted(a.pair_stats) == sorted(b.pair_stats)
    for key, entry in a.pair_stats.items():
        other = b.pair_stats[key]
        assert np.array_equal(entry["ci"]["matrix_low"], other["ci"]["matrix_low"])
        assert np.array_equal(entry["calibration"].p_values, other["calibration"].p_values)
