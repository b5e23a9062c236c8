"""``hf:`` dataset specs, on datasets saved to disk in tmp_path; the hub is never contacted.

Offline mode is forced (environment and the libraries' own flags), so a hub name that is not
cached must fail at once with a ValueError naming it. Sampling ``n`` with ``seed`` must pick
exactly what the same lines in a ``.txt`` file would give.
"""

from __future__ import annotations

import os

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

datasets = pytest.importorskip("datasets")

from layerknn.datasets import load_texts, parse_spec  # noqa: E402
from layerknn.sources import resolve_texts  # noqa: E402

ROWS = ["First prompt.", "", "Second, longer prompt with words.", None, "   ", "Third?", "4th", "fifth one",
        "sixth", "seventh line", "eighth", "ninth"]
KEPT = [row for row in ROWS if row is not None and row.strip()]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved DatasetDict (train/test) and a saved single Dataset."""
    root = tmp_path_factory.mktemp("hf")
    train = datasets.Dataset.from_dict({"text": ROWS, "label": list(range(len(ROWS)))})
    test = datasets.Dataset.from_dict({"text": ["only test text"], "label": [0]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "dict"))
    train.save_to_disk(str(root / "single"))
    return root


def test_saved_dataset_dict_and_single_split(saved):
    assert load_texts(f"hf:{saved / 'dict'}?split=train&field=text") == KEPT
    assert load_texts(f"hf:{saved / 'dict'}") == KEPT  # defaults: split=train, field=text
    assert load_texts(f"hf:{saved / 'dict'}?split=test") == ["only test text"]
    assert load_texts(f"hf:{saved / 'single'}?field=text") == KEPT
    assert load_texts(f"hf:{saved / 'single'}?field=label") == [str(i) for i in range(len(ROWS))]


def test_sampling_matches_the_other_specs(saved, tmp_path):
    lines = tmp_path / "same.txt"
    lines.write_text("\n".join(KEPT) + "\n", encoding="utf-8")
    for n, seed in [(3, 0), (3, 7), (len(KEPT), 1), (1, 2)]:
        picked = load_texts(f"hf:{saved / 'dict'}?n={n}&seed={seed}")
        assert picked == load_texts(f"{lines}?n={n}&seed={seed}")
        assert picked == load_texts(f"hf:{saved / 'dict'}", n=n, seed=seed)
        assert len(picked) == n and all(text in KEPT for text in picked)
    assert load_texts(f"hf:{saved / 'dict'}?n=3&seed=0") != load_texts(f"hf:{saved / 'dict'}?n=3&seed=1")
    with pytest.raises(ValueError, match=f"n=100 texts but only {len(KEPT)}"):
        load_texts(f"hf:{saved / 'dict'}?n=100")


def test_missing_field_and_split_list_what_exists(saved):
    with pytest.raises(ValueError, match=r"no field 'content'; its columns are \['text', 'label'\]"):
        load_texts(f"hf:{saved / 'dict'}?field=content")
    with pytest.raises(ValueError, match=r"no split 'validation'; its splits are \['test', 'train'\]"):
        load_texts(f"hf:{saved / 'dict'}?split=validation")
    with pytest.raises(ValueError, match="does not exist"):
        load_texts(f"hf:{saved / 'nowhere'}/")


def test_offline_hub_name_fails_fast_naming_the_dataset():
    with pytest.raises(ValueError, match=r"'someone/not-cached-anywhere' \(config 'cfg'\).*offline mode"):
        load_texts("hf:someone/not-cached-anywhere/cfg?split=train")
    with pytest.raises(ValueError, match=r"'plain-name'.*offline mode"):
        load_texts("hf:plain-name?config=x")


def test_spec_parsing():
    spec = parse_spec("hf:Salesforce/wikitext/wikitext-2-raw-v1?split=test&field=text&n=5&seed=2")
    assert spec.kind == "hf"
    assert spec.options == {"split": "test", "field": "text", "n": 5, "seed": 2}
    assert str(spec) == "hf:Salesforce/wikitext/wikitext-2-raw-v1?field=text&n=5&seed=2&split=test"
    with pytest.raises(ValueError, match="unknown option 'column' for hf"):
        parse_spec("hf:owner/name?column=text")
    with pytest.raises(ValueError, match="expected a dataset after 'hf:'"):
        parse_spec("hf:")
    with pytest.raises(ValueError, match="expected a hub id"):
        parse_spec("hf:a/b/c/d")
    with pytest.raises(ValueError, match="option 'n' must be >= 1"):
        parse_spec("hf:owner/name?n=0")


def test_resolve_texts_takes_hf_specs(saved):
    texts, label = resolve_texts(f"hf:{saved / 'dict'}?n=2&seed=0")
    assert texts == load_texts(f"hf:{saved / 'dict'}?n=2&seed=0") and label.startswith("hf:")
