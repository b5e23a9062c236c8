"""TransformerLens and nnsight models as extraction inputs, checked against each library's own activations.

TransformerLens: a ``TransformerBridge`` (TL >= 3) booted offline around a tiny HF model, and a
``HookedTransformer`` (TL < 4 only: TL 4 removed it) built from a tiny config; the reference is
``run_with_cache`` on one prompt at a time, pooled by hand: state 0 = ``blocks.0.hook_resid_pre``,
state i = ``blocks.{i-1}.hook_resid_post``, state L = ``ln_final`` of the last block's output.
nnsight: a ``LanguageModel`` wrapping a tiny HF model; the reference is its ``.trace()`` with
``output_hidden_states`` and the HF model itself. Batch size 1 must agree exactly for "last".
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import tiny_models
from layerknn.extract import extract, fingerprint_for

TEXTS = ["The quick brown fox.", "a", "Hello, world!", "0123456789" * 3, "Why?", "A medium prompt; digits 42."]
POOLINGS = ["last", "mean", "mean_no_bos"]


def saved_tokenizer(tmp_path, style="bos"):
    """The character tokenizer, saved and reloaded: TL re-creates tokenizers from their folder."""
    from transformers import AutoTokenizer

    tiny_models.char_tokenizer(style).save_pretrained(tmp_path / "tokenizer")
    return AutoTokenizer.from_pretrained(tmp_path / "tokenizer")


def pool_by_hand(states, tokens, pooling, bos):
    """(S, d) from a list of (1, T, d) states of one prompt whose ids are ``tokens``."""
    first = 1 if pooling == "mean_no_bos" and len(tokens) > 1 and tokens[0] == bos else 0
    return torch.stack([s[0, -1] if pooling == "last" else s[0, first:].mean(0) for s in states])


def lens_states(model, texts):
    """Per text: (its token ids, the L + 1 states from one ``run_with_cache``)."""
    out = []
    for text in texts:
        with torch.no_grad():
            _, cache = model.run_with_cache(text)
            last = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
            states = ([cache["blocks.0.hook_resid_pre"]]
                      + [cache[f"blocks.{i}.hook_resid_post"] for i in range(model.cfg.n_layers - 1)]
                      + [model.ln_final(last)])
        out.append((model.to_tokens(text)[0].tolist(), states, model.tokenizer.bos_token_id))
    return out


def lens_reference(per_text, pooling):
    return torch.stack([pool_by_hand(states, tokens, pooling, bos) for tokens, states, bos in per_text], dim=1)


def assert_matches(actual, expected, exact):
    if exact:
        assert torch.equal(actual, expected), (actual - expected).abs().max()
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def bridge_class():
    pytest.importorskip("transformer_lens")
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        pytest.skip("this TransformerLens has no TransformerBridge (TL < 3)")
    return TransformerBridge


@pytest.fixture(scope="module", params=["gpt2", "llama"])  # LayerNorm + learned positions; RMSNorm + rotary
def bridge(request, bridge_class, tmp_path_factory):
    hf_model, _ = tiny_models.build(request.param)
    model = bridge_class.boot_transformers(f"tiny-{request.param}", hf_model=hf_model,
                                           tokenizer=saved_tokenizer(tmp_path_factory.mktemp("tok")))
    return model, hf_model


def check_all_poolings(model, texts):
    per_text = lens_states(model, texts)
    single = extract(model, texts, batch_size=1, progress=False)  # one prompt per pass: exactly TL's numbers
    assert_matches(single.values, lens_reference(per_text, "last"), exact=True)
    for pooling in POOLINGS:  # padded batches of unequal lengths
        batched = extract(model, texts, pooling=pooling, batch_size=4, progress=False)
        assert_matches(batched.values, lens_reference(per_text, pooling), exact=False)
    assert single.num_layers == model.cfg.n_layers and single.hidden_size == model.cfg.d_model
    assert single.token_counts.tolist() == [len(tokens) for tokens, _, _ in per_text]


def test_bridge_matches_run_with_cache(bridge):
    check_all_poolings(bridge[0], TEXTS)


def test_bridge_follows_the_hf_contract(bridge):
    """Raw-weight bridge: 0 = embeddings, L = after the final norm, equal to HF's hidden_states."""
    model, hf_model = bridge
    acts = extract(model, TEXTS[:3], batch_size=1, progress=False)
    for j, text in enumerate(TEXTS[:3]):
        with torch.no_grad():
            states = hf_model(model.to_tokens(text), output_hidden_states=True).hidden_states
        torch.testing.assert_close(acts.values[:, j], torch.stack([s[0, -1] for s in states]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bridge", ["llama"], indirect=True)
def test_bridge_layer_subset_hooks_removed_and_fingerprint(bridge):
    model, _ = bridge
    full = extract(model, TEXTS, batch_size=3, progress=False)
    part = extract(model, TEXTS, layers=[0, -1], batch_size=3, progress=False)
    assert part.layers == (0, model.cfg.n_layers)
    torch.testing.assert_close(part.values, full.values[[0, -1]], rtol=0, atol=0)
    first = extract(model, TEXTS[:2], layers=[1], batch_size=1, progress=False)  # stops after block 0
    torch.testing.assert_close(first.values[0], full.values[1, :2], rtol=1e-5, atol=1e-5)
    assert all(not point.fwd_hooks for point in model.hook_dict.values()), "extraction left TL hooks behind"
    assert full.fingerprint == fingerprint_for(model, TEXTS)
    assert full.fingerprint != fingerprint_for(model, TEXTS, pooling="mean")
    with pytest.raises(ValueError, match="TransformerLens model"):
        extract(model, TEXTS, tokenizer=tiny_models.char_tokenizer("bos"), progress=False)
    with pytest.warns(UserWarning, match="truncated"):
        cut = extract(model, TEXTS, max_length=4, batch_size=2, progress=False)
    assert cut.truncated.tolist() == [len(model.to_tokens(t)[0]) > 4 for t in TEXTS]
    assert cut.token_counts.max().item() == 4


@pytest.mark.parametrize("bridge", ["llama"], indirect=True)
def test_bridge_chat_template_wraps_texts_without_a_second_bos(bridge):
    model, _ = bridge
    tokenizer = model.tokenizer
    tokenizer.chat_template = "<bos>{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    try:
        acts = extract(model, TEXTS[:3], chat_template=True, batch_size=1, progress=False)
        for j, text in enumerate(TEXTS[:3]):
            tokens = model.to_tokens(f"<bos>[{text}]", prepend_bos=False)
            assert acts.token_counts[j].item() == tokens.shape[1] == len(text) + 3
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens)
            assert torch.equal(acts.values[0, j], cache["blocks.0.hook_resid_pre"][0, -1])
    finally:
        tokenizer.chat_template = None


def test_hooked_transformer_matches_run_with_cache(tmp_path):
    lens = pytest.importorskip("transformer_lens")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        pytest.skip(f"TransformerLens {getattr(lens, '__version__', '>= 4')} has no HookedTransformer (removed in 4.0)")
    torch.manual_seed(0)
    config = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=64, d_head=4, d_vocab=tiny_models.VOCAB_SIZE,
                                     act_fn="gelu", normalization_type="LN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(config, tokenizer=saved_tokenizer(tmp_path, "plain"))
    with torch.no_grad():  # a final norm with weights, so "after the final norm" is tested, not "normalised"
        model.ln_final.w.normal_()
        model.ln_final.b.normal_()
    check_all_poolings(model, TEXTS)
    last = extract(model, ["Hello"], progress=False).values[-1]  # state L is what TL unembeds
    with torch.no_grad():
        torch.testing.assert_close(model.unembed(last[None]), model("Hello")[:, -1:], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def language_model():
    nnsight = pytest.importorskip("nnsight")
    hf_model, tokenizer = tiny_models.build("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight 0.8 deprecates LanguageModel for TransformersModel
        return nnsight.LanguageModel(hf_model, tokenizer=tokenizer), hf_model, tokenizer


@pytest.mark.parametrize("pooling", POOLINGS)
def test_nnsight_equals_its_hf_model(language_model, pooling):
    lm, hf_model, tokenizer = language_model
    wrapped = extract(lm, TEXTS, pooling=pooling, batch_size=3, progress=False)
    direct = extract(hf_model, TEXTS, tokenizer=tokenizer, pooling=pooling, batch_size=3, progress=False)
    assert torch.equal(wrapped.values, direct.values)
    assert wrapped.fingerprint == direct.fingerprint == fingerprint_for(lm, TEXTS, pooling=pooling)


def test_nnsight_transformers_model_too(language_model):
    nnsight = pytest.importorskip("nnsight")
    _, hf_model, tokenizer = language_model
    wrapped = nnsight.TransformersModel(hf_model, tokenizer=tokenizer)  # the class LanguageModel gives way to
    assert torch.equal(extract(wrapped, TEXTS, progress=False).values,
                       extract(hf_model, TEXTS, tokenizer=tokenizer, progress=False).values)


def test_nnsight_matches_its_trace(language_model):
    lm, _, tokenizer = language_model
    acts = extract(lm, TEXTS, batch_size=1, progress=False)
    for j, text in enumerate(TEXTS):
        with lm.trace(text, output_hidden_states=True):
            out = lm.output.save()
        assert torch.equal(acts.values[:, j], torch.stack([h[0, -1] for h in out.hidden_states]))


@pytest.mark.parametrize("bridge", ["llama"], indirect=True)
def test_compare_accepts_lens_and_nnsight_models(language_model, bridge):
    import layerknn

    lm = language_model[0]
    model, _ = bridge
    result = layerknn.compare(lm, model, TEXTS, k=2, cache=False, bootstrap=0, permutations=0)
    assert result.names[1] == "tiny-llama"
    assert result.matrix.shape == (3, 3)


def test_unknown_model_object_is_a_type_error():
    with pytest.raises(TypeError, match="TransformerLens model or an nnsight LanguageModel, got object"):
        extract(object(), TEXTS, tokenizer=tiny_models.char_tokenizer("bos"), progress=False)
