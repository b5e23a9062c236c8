"""Many datasets in one run (``layerknn.zoos``, ``layerknn zoo --data A --data B``) and the paper preset.

Each dataset's Zoo equals a separate single-dataset run bit for bit; a failing unit is named with
its model and dataset after the others finish; the preset prints its plan and, offline, stops at
once naming the models missing from the local Hugging Face cache (no network is ever used).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models  # noqa: E402
from layerknn import executors, presets  # noqa: E402
from layerknn.zoo import Zoo, zoo  # noqa: E402
from layerknn.zoos import dataset_names, zoos  # noqa: E402

DATASETS = {
    "words": [f"{w} {i}" for i, w in enumerate(["layer", "model", "token", "depth", "cache"] * 4)],
    "digits": [str(i * 7919)[: 2 + i % 5] + "!" * (i % 3) for i in range(17)],
}
STATS = {"bootstrap": 15, "permutations": 8, "seed": 2}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return tiny_models.save_models(tmp_path_factory.mktemp("zoos-models"), (("gpt2", 6), ("qwen2", 7)))


def test_each_dataset_equals_its_own_run(model_dirs, tmp_path):
    records = []
    found = zoos(model_dirs, DATASETS, k=3, cache=tmp_path / "cache", progress=records.append, **STATS)
    assert list(found) == ["words", "digits"]
    for name, texts in DATASETS.items():
        alone = zoo(model_dirs, texts, k=3, cache=False, **STATS)
        tiny_models.assert_same_zoo(found[name], alone)
        assert found[name].dataset == alone.dataset
        assert found[name].n == len(texts) and [u["dataset"] for u in found[name].meta["units"]] == [name, name]
    assert sorted((r["dataset"], r["index"]) for r in records) == [("digits", 0), ("digits", 1), ("words", 0),
                                                                    ("words", 1)]


def test_arrays_on_several_datasets_and_names():
    rng = np.random.default_rng(5)
    acts = [rng.standard_normal((L + 1, 12, 6)).astype(np.float32) for L in (2, 3)]
    specs = ["builtin:random-strings?n=12&seed=1", "builtin:random-strings?n=12&seed=2"]
    found = zoos(acts, specs, k=2, bootstrap=0, permutations=0)
    assert list(found) == specs and found[specs[1]].dataset == specs[1]
    assert np.array_equal(found[specs[0]].matrix, zoo(acts, specs[0], k=2, bootstrap=0, permutations=0).matrix)
    with pytest.raises(ValueError, match="distinct names"):
        dataset_names([specs[0], specs[0]])
    with pytest.raises(ValueError, match="at least one dataset"):
        dataset_names({})
    with pytest.raises(TypeError, match="datasets must be a mapping"):
        dataset_names("builtin:random-strings")
    with pytest.raises(ValueError, match=r"texts of dataset 'short' must cover the same prompts.*texts: n=5"):
        zoos(acts, {"ok": [str(i) for i in range(12)], "short": list("abcde")}, k=2)
    with pytest.raises(ValueError, match=r"k must be in \[1, n-1\] = \[1, 11\] for n=12 prompts of dataset 'ok'"):
        zoos(acts, {"ok": [str(i) for i in range(12)]}, k=12)


def test_a_failing_unit_names_model_and_dataset(model_dirs, tmp_path, monkeypatch):
    real = executors.run_unit

    def run_unit(unit, texts, progress=False):
        if unit.index == 1 and unit.dataset_name == "digits":
            raise ValueError("tokenizer exploded")
        return real(unit, texts, progress)

    monkeypatch.setattr(executors, "run_unit", run_unit)
    finished = []
    with pytest.raises(ValueError, match=r"model 'B' \('.*qwen2'\) on dataset 'digits' failed: "
                                         r"tokenizer exploded"):
        zoos(model_dirs, DATASETS, k=3, bootstrap=0, permutations=0, cache=tmp_path / "cache",
             progress=finished.append, names=None)
    assert sorted((r["dataset"], r["index"]) for r in finished) == [("digits", 0), ("words", 0), ("words", 1)]
    assert len(list((tmp_path / "cache" / "neighbours").glob("*.npz"))) == 3  # the others finished and are cached


def test_cli_zoo_with_two_datasets(tmp_path, capsys):
    from layerknn.cli import main

    rng = np.random.default_rng(8)
    acts = [rng.standard_normal((L + 1, 14, 6)).astype(np.float32) for L in (2, 3)]
    for i, a in enumerate(acts):
        np.savez(tmp_path / f"m{i}.npz", values=a)
    specs = ["builtin:random-strings?n=14&seed=1", "builtin:random-strings?length=20&n=14&seed=2"]
    out = tmp_path / "out"
    args = ["zoo", str(tmp_path / "m0.npz"), str(tmp_path / "m1.npz"), "--data", specs[0], "--data", specs[1],
            "--k", "3", "--bootstrap", "0", "--permutations", "0", "--no-progress", "--no-cache", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"on {specs[1]}" in printed and "for 2 datasets" in printed
    folders = ["builtin-random-strings-n-14-seed-1", "builtin-random-strings-length-20-n-14-seed-2"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == sorted(folders) and manifest["datasets"] == dict(zip(folders, specs))
    expected = zoo(acts, k=3, bootstrap=0, permutations=0).matrix
    for folder, spec in zip(folders, specs):
        saved = Zoo.load(out / folder / "zoo.npz")
        assert saved.dataset == spec and np.array_equal(saved.matrix, expected)
        assert {"matrix.png", "unit_square.png", "report.json"} <= {p.name for p in (out / folder).iterdir()}
    assert main(["compare", str(tmp_path / "m0.npz"), str(tmp_path / "m1.npz"), "--data", specs[0], "--data",
                 specs[1], "--out", str(tmp_path / "cmp")]) == 2
    assert "compare takes one --data" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# the paper preset


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local Hugging Face cache, offline, with every network connection refused."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the preset must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


def fake_cached(cache: Path, repo: str, files: dict[str, str]) -> None:
    """Put ``files`` into the hub cache layout for ``repo`` (refs/main -> one snapshot)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)


def test_missing_offline_reads_only_the_local_cache(hub_cache):
    preset = presets.get_preset("paper")
    repos = [m.repo for m in preset.models]
    assert len(repos) >= 20 and len(set(repos)) == len(repos)
    assert any("70B" in r for r in repos) and any(r.startswith("openai-community/gpt2") for r in repos)
    fake_cached(hub_cache, repos[0], {"config.json": "{}", "model.safetensors": ""})
    index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    fake_cached(hub_cache, repos[1], {"config.json": "{}", "model.safetensors.index.json": index,
                                      "model-1.safetensors": ""})  # one shard missing
    fake_cached(hub_cache, repos[2], {"model.safetensors": ""})  # no config
    missing = presets.missing_offline(repos)
    assert missing == repos[1:]
    assert presets.missing_offline(["smollm2-135m", str(hub_cache)]) == []  # an alias and a path are not hub ids
    with pytest.raises(presets.ModelsNotAvailable, match="switched off.*" + repos[1]):
        presets.require_available(missing)
    presets.require_available([])
    with pytest.raises(ValueError, match="preset must be one of 'paper', got 'nope'"):
        presets.get_preset("nope")


def test_plan_memory_follows_dtype():
    model = presets.HubModel("org/m", 1.0, 3, 8)
    (f32,) = presets.plan([model], n=10, k=2, datasets=["d"], dtype="float32", gpu_memory=2 * 10**9)
    (b16,) = presets.plan([model], n=10, k=2, datasets=["d"], dtype="bfloat16", gpu_memory=2 * 10**9)
    activations = 2 * 4 * 10 * 8 * 4
    assert f32["memory"] == 4 * 10**9 + activations and b16["memory"] == 2 * 10**9 + activations
    assert (f32["gpus"], b16["gpus"]) == (3, 2)
    assert presets.plan(["some/other"], n=10, k=2, datasets=["d"], dtype="float32")[0]["memory"] is None


def test_cli_preset_dry_run_and_offline_failure(hub_cache, tmp_path, capsys):
    from layerknn.cli import main

    repos = [m.repo for m in presets.get_preset("paper").models]
    out = tmp_path / "out"
    assert main(["zoo", "--preset", "paper", "--dry-run", "--out", str(out), "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert all(repo in printed for repo in repos)
    assert "n=1024, k=10, dtype bfloat16" in printed and "builtin:stdlib-docs?n=1024" in printed
    assert "GiB" in printed and f"not on this machine ({len(repos)} of {len(repos)})" in printed
    assert not out.exists()
    assert main(["zoo", "--preset", "paper", "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "layerknn: error:" in captured.err and repos[-1] in captured.err and "HF_HUB_OFFLINE" in captured.err
    assert not out.exists()
    assert main(["zoo", "--preset", "paper", "a", "b", "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["zoo", "--preset", "nope", "--out", str(out)]) == 2
    assert "preset must be one of 'paper'" in capsys.readouterr().err
