"""Extraction feeds the model every tokenizer output its forward takes (token_type_ids, ...).

The reference is the plain call a researcher writes, one prompt at a time:
``model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)``, pooled by hand.
A BERT-like tokenizer whose text tokens carry type id 1 changes BERT's embeddings, and any
token_type_ids change GPT-2's (it embeds them with its token table), so dropping them gives
other numbers; padding of the extra inputs must not leak into real positions either.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models
from layerknn.extract import extract

TEXTS = ["The quick brown fox jumps over the lazy dog.", "a", "Hello, world!", "0123456789" * 4, "Why?",
         "A medium sized prompt, with punctuation; and digits 42."]


def typed_tokenizer(text_type_id: int):
    """Character tokenizer: [CLS] text [SEP], returning token_type_ids (text tokens get ``text_type_id``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(tiny_models.SPECIALS + [chr(c) for c in range(32, 127)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single=f"[CLS]:0 $A:{text_type_id} [SEP]:{text_type_id}",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", cls_token="[CLS]", sep_token="[SEP]", pad_token="<pad>",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def direct_reference(model, tokenizer, texts, pooling):
    """(L+1, n, d): pool ``model(**tokenizer(text), output_hidden_states=True)`` prompt by prompt."""
    columns = []
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            states = model(**inputs, output_hidden_states=True).hidden_states
        columns.append(torch.stack([h[0, -1] if pooling == "last" else h[0].mean(0) for h in states]))
    return torch.stack(columns, dim=1)


def assert_close_relative(actual, expected, tolerance=1e-5):
    """Per layer and prompt: ||actual - expected|| <= tolerance * ||expected||."""
    error = (actual - expected).norm(dim=-1)
    scale = expected.norm(dim=-1)
    assert (error <= tolerance * scale).all(), f"largest relative error {(error / scale).max():.3g}"


@pytest.mark.parametrize("family, text_type_id", [("bert", 1), ("gpt2", 1), ("gpt2", 0)])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_extract_equals_the_model_called_on_the_tokenizer_output(family, text_type_id, pooling):
    model, _ = tiny_models.build(family, seed=1)
    tokenizer = typed_tokenizer(text_type_id)
    assert "token_type_ids" in tokenizer(TEXTS[0])
    expected = direct_reference(model, tokenizer, TEXTS, pooling)
    for batch_size in (1, 4, "auto"):
        acts = extract(model, TEXTS, tokenizer=tokenizer, pooling=pooling, batch_size=batch_size, progress=False)
        assert_close_relative(acts.values, expected)


def test_the_type_ids_matter_for_these_models():
    # Guards the test above: without token_type_ids the numbers really differ.
    for family in ("bert", "gpt2"):
        model, _ = tiny_models.build(family, seed=1)
        tokenizer = typed_tokenizer(1)
        inputs = tokenizer(TEXTS[2], return_tensors="pt")
        with torch.no_grad():
            full = model(**inputs, output_hidden_states=True).hidden_states[-1]
            bare = model(input_ids=inputs["input_ids"], output_hidden_states=True).hidden_states[-1]
        assert (full - bare).norm() > 0.1 * full.norm()


def test_truncated_rows_keep_their_type_ids_aligned():
    model, _ = tiny_models.build("bert", seed=1)
    tokenizer = typed_tokenizer(1)
    with pytest.warns(UserWarning, match="truncated"):
        acts = extract(model, TEXTS, tokenizer=tokenizer, pooling="mean", max_length=12, batch_size=3, progress=False)
    columns = []
    for text in TEXTS:
        inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=12)
        with torch.no_grad():
            states = model(**inputs, output_hidden_states=True).hidden_states
        columns.append(torch.stack([h[0].mean(0) for h in states]))
    assert_close_relative(acts.values, torch.stack(columns, dim=1))


def test_outputs_the_forward_does_not_take_are_not_passed():
    model, _ = tiny_models.build("llama", seed=1)  # LlamaModel.forward has no token_type_ids
    tokenizer = typed_tokenizer(1)
    plain = tiny_models.char_tokenizer("bert")
    with_types = extract(model, TEXTS, tokenizer=tokenizer, progress=False)
    without = extract(model, TEXTS, tokenizer=plain, progress=False)
    assert torch.equal(with_types.values, without.values)


def test_a_forwarded_output_that_is_not_per_token_is_refused():
    model, _ = tiny_models.build("bert", seed=1)

    class Odd:
        bos_token_id = eos_token_id = pad_token_id = None
        name_or_path, model_max_length = "odd", 64

        def __len__(self):
            return 100

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[5, 6, 7] for _ in texts], "token_type_ids": [[0, 1] for _ in texts]}

    with pytest.raises(ValueError, match="'token_type_ids'.*one int per token.*indices \\[0, 1\\]"):
        extract(model, ["x", "y"], tokenizer=Odd(), progress=False)
