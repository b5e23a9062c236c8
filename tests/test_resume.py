"""Resumable extraction: an interrupted run, rerun with the same resume_dir, redoes only the
missing batches and gives the same values bit for bit as one uninterrupted run."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models
from layerknn.cache import CacheCorruptionWarning
from layerknn.extract import extract, remove_resume_files

BASE = ["The quick brown fox jumps over the lazy dog. ", "Hello, world! ", "0123456789", "Why? ",
        "Layer-wise nearest neighbours compare representations. "]
# 40 prompts of 1 to ~180 characters (= tokens), unsorted: several batches for every batch_size tried.
TEXTS = [(BASE[i % 5] * 4)[: (i * 37) % 180 + 1] for i in range(40)]


class ForwardCounter:
    """Counts forward passes of the base model; raises KeyboardInterrupt on pass number ``fail_at``."""

    def __init__(self, model, fail_at=None):
        self.calls, self.fail_at = 0, fail_at
        self.handle = model.base_model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated Ctrl-C")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run(model, tokenizer, fail_at=None, **kwargs):
    with ForwardCounter(model, fail_at) as counter:
        acts = extract(model, TEXTS, tokenizer=tokenizer, progress=False, **kwargs)
    return acts, counter.calls


def batch_files(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("batch-"))


def assert_identical(a, b):
    assert a.values.dtype == b.values.dtype
    assert np.array_equal(a.values.float().numpy(), b.values.float().numpy())
    assert torch.equal(a.token_counts, b.token_counts) and torch.equal(a.truncated, b.truncated)
    assert a.fingerprint == b.fingerprint


@pytest.mark.filterwarnings("ignore:.*were truncated")
@pytest.mark.parametrize("family, batch_size, options", [
    ("gpt2", 4, {"pooling": "last"}),
    ("llama", "auto", {"pooling": "mean", "layers": [2, 0]}),
    ("bert", 3, {"pooling": "mean_no_bos", "max_length": 50}),
    ("qwen2", 5, {"out_dtype": torch.bfloat16}),
])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, family, batch_size, options):
    model, tokenizer = tiny_models.build(family, seed=2)
    fresh, total = run(model, tokenizer, batch_size=batch_size, **options)
    assert total >= 4
    done = total // 2
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, fail_at=done + 1, batch_size=batch_size, resume_dir=tmp_path, **options)
    assert len(batch_files(tmp_path)) == done
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    resumed, calls = run(model, tokenizer, batch_size=batch_size, resume_dir=tmp_path, **options)
    assert calls == total - done  # only the missing batches ran
    assert_identical(resumed, fresh)
    assert len(batch_files(tmp_path)) == total
    again, calls = run(model, tokenizer, batch_size=batch_size, resume_dir=tmp_path, **options)
    assert calls == 0
    assert_identical(again, fresh)
    assert remove_resume_files(tmp_path) == total and not tmp_path.exists()


def test_corrupt_and_foreign_files_are_named_deleted_and_recomputed(tmp_path):
    model, tokenizer = tiny_models.build("gpt2", seed=2)
    fresh, total = run(model, tokenizer, batch_size=4)
    other = tmp_path / "other"
    run(model, tokenizer, batch_size=4, pooling="mean", resume_dir=other)  # another extraction
    ours = tmp_path / "ours"
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, fail_at=4, batch_size=4, resume_dir=ours)
    names = batch_files(ours)
    assert len(names) == 3
    with np.load(ours / names[0]) as data:  # a changed value under the old header: only the checksum sees it
        arrays = dict(data)
    arrays["values"][0, 0, 0] += 1.0
    np.savez(ours / names[0], **arrays)
    data = (ours / names[1]).read_bytes()
    (ours / names[1]).write_bytes(data[: len(data) // 2])  # cut short
    foreign = min(other.iterdir()).read_bytes()  # a valid file of another run under our name
    (ours / names[2]).write_bytes(foreign)
    (ours / "notes.txt").write_text("not ours")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, calls = run(model, tokenizer, batch_size=4, resume_dir=ours)
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheCorruptionWarning)]
    assert len(messages) == 3, messages
    assert any(names[0] in m and "checksum" in m for m in messages)
    assert any(names[1] in m and "unreadable" in m for m in messages)
    assert any(names[2] in m and "another extraction" in m for m in messages)
    assert calls == total
    assert_identical(resumed, fresh)
    assert len(batch_files(other)) == total  # files of another run are left alone
    assert remove_resume_files(ours) == total
    assert sorted(p.name for p in ours.iterdir()) == ["notes.txt"]  # not ours to delete


def test_options_that_change_the_batches_or_values_start_afresh(tmp_path):
    model, tokenizer = tiny_models.build("gpt2", seed=2)
    run(model, tokenizer, batch_size=4, resume_dir=tmp_path)
    for options in ({"batch_size": 5}, {"batch_size": 4, "out_dtype": torch.float64},
                    {"batch_size": 4, "layers": [1]}):
        acts, calls = run(model, tokenizer, resume_dir=tmp_path, **options)
        assert calls > 0, options
        fresh, _ = run(model, tokenizer, **options)
        assert_identical(acts, fresh)


def test_bad_resume_dir(tmp_path):
    model, tokenizer = tiny_models.build("gpt2", seed=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="resume_dir must be a directory.*file"):
        extract(model, ["a"], tokenizer=tokenizer, resume_dir=tmp_path / "file", progress=False)
    with pytest.raises(TypeError, match="resume_dir"):
        extract(model, ["a"], tokenizer=tokenizer, resume_dir=3, progress=False)
    assert remove_resume_files(tmp_path / "missing") == 0


def test_resume_after_out_of_memory_back_off(tmp_path):
    # batch_size="auto" halves its limits on OOM and replans; the stored batches follow the
    # replanned ranges, and a rerun that backs off the same way reuses them.
    model, tokenizer = tiny_models.build("llama", seed=2)

    def fail_big_batches(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.model.layers[1].register_forward_pre_hook(fail_big_batches, with_kwargs=True)
    try:
        fresh, total = run(model, tokenizer, batch_size="auto", pooling="mean")
        with pytest.raises(KeyboardInterrupt):
            run(model, tokenizer, fail_at=total - 2, batch_size="auto", pooling="mean", resume_dir=tmp_path)
        stored = len(batch_files(tmp_path))
        assert stored >= 2
        resumed, calls = run(model, tokenizer, batch_size="auto", pooling="mean", resume_dir=tmp_path)
    finally:
        handle.remove()
    assert calls <= total - stored  # stored batches are not run again, nor the OOM attempts before them
    assert_identical(resumed, fresh)
