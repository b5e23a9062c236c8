"""Shared pytest fixtures: the devices every engine test runs on, and array helpers.

The ``devices`` fixture always yields "cpu" and gains "cuda" only when layerknn was built with
CUDA and a GPU is usable, so the same tests cover both engines and skip nothing on CPU-only
machines. Tests needing a GPU explicitly carry the ``gpu`` marker and skip cleanly.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # hf: dataset specs: tests never reach the hub

import layerknn  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if layerknn.cuda_available() else [])


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's id: fresh inputs per test, reproducible per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache root: no test reads or writes ~/.cache/layerknn."""
    monkeypatch.setenv("LAYERKNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(params=DEVICES)
def device(request):
    """Each available device in turn: "cpu", then "cuda" when present."""
    return request.param


def on_device(array: np.ndarray, device: str):
    """The array as the natural input for ``device``: NumPy for cpu, a torch tensor for cuda."""
    if device == "cpu":
        return array
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def to_numpy(array) -> np.ndarray:
    """Host NumPy copy of a NumPy array or torch tensor."""
    if isinstance(array, np.ndarray):
        return array
    return array.detach().cpu().numpy()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a GPU and a CUDA build of layerknn")
    for item in items:
        # The marker itself: `"gpu" in item.keywords` also matches a checkout directory named gpu.
        if item.get_closest_marker("gpu") is not None and not layerknn.cuda_available():
            item.add_marker(skip_gpu)
