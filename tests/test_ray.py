"""The Ray executor: a zoo on a local two-CPU Ray cluster equals the local executor's bit for bit
(matrices, bootstrap intervals, calibration p-values; two datasets in one run through a file:// store),
survives a worker that dies mid-write,
resumes after an interrupted driver by recomputing only the unfinished models, and reports a
failing model by name after the other models finished."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import tiny_models  # noqa: E402
from layerknn import store  # noqa: E402
from layerknn.cache import Cache  # noqa: E402
from layerknn.executor_choice import get_executor  # noqa: E402
from layerknn.executors import LocalExecutor, Unit, run_unit  # noqa: E402
from layerknn.ray_executor import RayExecutor, unit_resources  # noqa: E402
from layerknn.options import ExtractOptions, LoadOptions  # noqa: E402
from layerknn.zoo import zoo  # noqa: E402
from layerknn.zoos import zoos  # noqa: E402

BASE = ["The quick brown fox jumps over the lazy dog. ", "Hello, world! ", "0123456789 ", "Why? ",
        "Layer-wise nearest neighbours compare representations. "]
DATASETS = {
    "mixed": [(BASE[i % 5] * 3)[: (i * 37) % 90 + 3] for i in range(30)],
    "numbers": [f"item {i}: " + "x" * (i % 7) + str(i * i) for i in range(24)],
}
STATS = {"bootstrap": 40, "permutations": 25, "seed": 7}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Three tiny random models of different families, saved as model folders."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for family, seed in (("gpt2", 0), ("llama", 1), ("qwen2", 2)):
        model, tokenizer = tiny_models.build(family, seed)
        model.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        paths.append(str(root / family))
    return paths


def assert_same_zoo(a, b):
    assert a.names == b.names and a.num_layers == b.num_layers and (a.n, a.k) == (b.n, b.k)
    assert a.matrix.dtype == b.matrix.dtype and np.array_equal(a.matrix, b.matrix)
    for x, y in zip(a.neighbors, b.neighbors):
        assert np.array_equal(x, y)
    for x, y in zip(a.tie_rates, b.tie_rates):
        assert (x is None and y is None) or np.array_equal(x, y)
    assert sorted(a.pair_stats) == sorted(b.pair_stats) and a.pair_stats
    for key in a.pair_stats:
        ci_a, ci_b = a.pair_stats[key]["ci"], b.pair_stats[key]["ci"]
        assert ci_a is not None and "matrix_low" in ci_a
        assert_same(ci_a, ci_b, f"{key} ci")
        null_a, null_b = a.pair_stats[key]["calibration"], b.pair_stats[key]["calibration"]
        assert null_a is not None and null_a.p_values.shape == a.comparison(*key).matrix.shape
        assert_same(vars(null_a), vars(null_b), f"{key} calibration")


def assert_same(x, y, where: str) -> None:
    """Deep equality, bit for bit, NaN equal to NaN."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and sorted(x) == sorted(y), where
        for name in x:
            assert_same(x[name], y[name], f"{where}.{name}")
    elif isinstance(x, (list, tuple)) and not all(isinstance(v, (int, float)) for v in x):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(x, (str, bool, type(None))):
        assert x == y, where
    else:
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, where
        assert np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"), where


def neighbour_entries(cache_root: Path) -> list[Path]:
    folder = Path(cache_root) / "neighbours"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------
# no cluster needed


def test_executor_names_are_parsed_and_checked():
    assert isinstance(get_executor("local"), LocalExecutor)
    with pytest.raises(ValueError, match="executor must be 'local', 'ray'.*got 'lokal'"):
        get_executor("lokal")
    with pytest.raises(TypeError, match="executor must be .* got int"):
        get_executor(3)


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    from layerknn.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    acts = [np.random.default_rng(i).standard_normal((3, 20, 4)).astype(np.float32) for i in range(2)]
    with pytest.raises(ImportError, match=r"pip install layerknn\[ray\]"):
        zoo(acts, k=3, bootstrap=0, permutations=0, executor="ray")
    for i, a in enumerate(acts):
        np.savez(tmp_path / f"m{i}.npz", values=a)
    code = main(["zoo", str(tmp_path / "m0.npz"), str(tmp_path / "m1.npz"), "--ray", "--no-progress",
                 "--out", str(tmp_path / "out"), "--k", "3"])
    assert code == 3 and not (tmp_path / "out").exists()


def test_cli_ray_flag_maps_to_executor():
    from layerknn.cli import _executor

    assert _executor(None) == "local" and _executor("ray") == "ray" and _executor("auto") == "auto"
    assert _executor("ray://head:10001") == "ray://head:10001" and _executor("head:6379") == "ray:head:6379"


def test_unit_resources_follow_device_and_size(model_dirs):
    load_cpu, load_gpu, extract = LoadOptions(), LoadOptions(device="cuda:0"), ExtractOptions()
    folder = Unit(0, "A", model_dirs[0], 5, load_cpu, extract, None)
    small = unit_resources(folder, 100)
    large = unit_resources(Unit(0, "A", model_dirs[0], 5, load_cpu, extract, None), 100_000)
    assert small["num_cpus"] == 1 and "num_gpus" not in small
    # 3 rows x n x 32 floats twice + 3 x n x 5 neighbour entries: grows with n as the formula says
    assert large["memory"] - small["memory"] == (2 * 3 * 32 * 4 + 3 * 5 * 8) * (100_000 - 100)
    assert unit_resources(Unit(0, "A", model_dirs[0], 5, load_gpu, extract, None), 100)["num_gpus"] == 1
    assert unit_resources(folder, 100, cluster_gpus=2)["num_gpus"] == 1  # automatic device on a GPU cluster
    assert unit_resources(folder, 10**9, node_memory=1e9)["memory"] == 10**9  # capped: never unschedulable
    assert "memory" not in unit_resources(Unit(0, "A", "org/hub-model", 5, load_cpu, extract, None), 100)
    acts = np.zeros((4, 100, 16), np.float32)
    assert "num_gpus" not in unit_resources(Unit(0, "A", acts, 5, load_cpu, extract, None), 100, cluster_gpus=1)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_failing_unit_names_the_model_after_the_others_finish(request, executor, model_dirs, tmp_path):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    finished = []
    with pytest.raises(Exception, match="broken-model.*failed") as info:
        zoo([model_dirs[0], str(broken), model_dirs[1]], DATASETS["numbers"], k=3, bootstrap=0, permutations=0,
            cache=tmp_path / "cache", executor=executor, progress=finished.append)
    assert "model 1" in str(info.value)
    assert sorted(r["index"] for r in finished) == [0, 2]  # both other models ran to the end ...
    assert len(neighbour_entries(tmp_path / "cache")) == 2  # ... and are cached for the rerun


# ------------------------------------------------------------------------------------------
# on the cluster


def test_arrays_zoo_equals_local(ray_cluster):
    rng = np.random.default_rng(3)
    acts = [rng.standard_normal((L + 1, 50, 12)).astype(np.float32) for L in (2, 3, 5, 4)]
    acts[2][:, 10] = acts[2][:, 11]  # duplicate prompts: ties broken by the lower index everywhere
    local = zoo(acts, k=4, **STATS)
    remote = zoo(acts, k=4, executor="ray", **STATS)
    assert_same_zoo(local, remote)
    assert remote.meta["options"]["executor"] == "ray" and local.meta["options"]["executor"] == "local"
    node = ray_cluster.get_runtime_context().get_node_id()
    assert [u["node"] for u in remote.meta["units"]] == [node] * 4
    assert [u["node"] for u in local.meta["units"]] == [None] * 4
    assert all(u["seconds"] >= 0 and u["host"] for u in remote.meta["units"])


def test_two_datasets_through_a_url_store_equal_separate_local_runs(ray_cluster, model_dirs, tmp_path):
    root = (tmp_path / "store").as_uri()  # the fsspec URL store, shared by the workers through the filesystem
    seen = []
    remote = zoos(model_dirs, DATASETS, k=3, cache=root, executor="ray", progress=seen.append, **STATS)
    assert list(remote) == list(DATASETS) and len(seen) == 3 * len(DATASETS)
    for name, texts in DATASETS.items():
        assert_same_zoo(zoo(model_dirs, texts, k=3, cache=tmp_path / "local", **STATS), remote[name])
        assert [(u["cache"], u["dataset"]) for u in remote[name].meta["units"]] == [("miss", name)] * 3
    assert len(neighbour_entries(tmp_path / "store")) == 3 * len(DATASETS)
    again = zoos(model_dirs, DATASETS, k=3, cache=root, executor="ray", **STATS)  # a rerun recomputes nothing
    for name in DATASETS:
        assert [u["cache"] for u in again[name].meta["units"]] == ["neighbors"] * 3
        assert_same_zoo(remote[name], again[name])


def test_worker_dying_mid_write_is_retried_and_leaves_no_entry(ray_cluster, model_dirs, tmp_path):
    marker = tmp_path / "first-attempt"
    victim = "llama"

    def unit_function(unit, texts):
        if Path(unit.model).name == victim and not marker.exists():
            marker.touch()
            real_replace = os.replace

            def die_before_replace(src, dst):
                if "neighbours" in str(dst):
                    os._exit(1)  # the worker process vanishes with the entry written but not moved in
                real_replace(src, dst)

            store.os.replace = die_before_replace
        return run_unit(unit, texts)

    texts = DATASETS["mixed"]
    expected = zoo(model_dirs, texts, k=3, cache=tmp_path / "local", **STATS)
    executor = RayExecutor(max_retries=2, unit_function=unit_function)
    result = zoo(model_dirs, texts, k=3, cache=tmp_path / "ray", executor=executor, **STATS)
    assert marker.exists()
    assert_same_zoo(expected, result)
    by_name = {Path(m).name: u for m, u in zip(model_dirs, result.meta["units"])}
    assert by_name[victim]["cache"] == "activations"  # the retry reused the complete activations entry
    folder = tmp_path / "ray" / "neighbours"
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers, "the first attempt should have died with its temporary file written"
    entries = neighbour_entries(tmp_path / "ray")
    assert len(entries) == 3
    for path in entries:
        store.read(path, kind="neighbours")  # every visible entry is whole and checksummed
    cache = Cache(tmp_path / "ray")
    fingerprint = store.read(entries[0], kind="neighbours")[1]["fingerprint"]
    assert cache.get_neighbors(fingerprint, 4, n=len(texts)) is not None


def test_worker_lost_beyond_retries_names_the_model(ray_cluster, model_dirs, tmp_path):
    def unit_function(unit, texts):
        if Path(unit.model).name == "qwen2":
            os._exit(1)
        return run_unit(unit, texts)

    finished = []
    with pytest.raises(RuntimeError, match=r"model 'model 2' \('.*qwen2'\) failed: .*(Worker|died|crash)") as info:
        zoo(model_dirs, DATASETS["numbers"], k=3, bootstrap=0, permutations=0, cache=tmp_path / "cache",
            executor=RayExecutor(max_retries=0, unit_function=unit_function), progress=finished.append)
    assert sorted(r["index"] for r in finished) == [0, 1], info.value
    assert len(neighbour_entries(tmp_path / "cache")) == 2


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_interrupted_driver_rerun_recomputes_only_unfinished(request, executor, model_dirs, tmp_path):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    texts = DATASETS["numbers"]
    models = list(model_dirs)

    def stop(record):
        raise KeyboardInterrupt("stop after the first model")

    with pytest.raises(KeyboardInterrupt):
        zoo(models, texts, k=3, cache=tmp_path / "cache", executor=executor, progress=stop, **STATS)
    finished = len(neighbour_entries(tmp_path / "cache"))
    assert 1 <= finished <= (1 if executor == "local" else len(model_dirs))
    seen = []
    again = zoo(models, texts, k=3, cache=tmp_path / "cache", executor=executor, progress=seen.append, **STATS)
    reused = [u for u in again.meta["units"] if u["cache"] == "neighbors"]
    assert len(reused) == finished and len(seen) == len(models)
    assert len(neighbour_entries(tmp_path / "cache")) == len(model_dirs)
    assert_same_zoo(again, zoo(models, texts, k=3, cache=False, **STATS))


def test_cli_zoo_runs_on_the_cluster(ray_cluster, tmp_path, capsys):
    import json

    from layerknn.cli import main

    rng = np.random.default_rng(11)
    for i, L in enumerate((2, 3)):
        np.savez(tmp_path / f"m{i}.npz", values=rng.standard_normal((L + 1, 30, 6)).astype(np.float32))
    args = ["zoo", str(tmp_path / "m0.npz"), str(tmp_path / "m1.npz"), "--k", "3", "--bootstrap", "20",
            "--permutations", "10", "--no-progress", "--no-cache"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--ray", "--out", str(tmp_path / "ray")]) == 0
    capsys.readouterr()
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    remote = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert remote["meta"]["options"]["executor"] == "ray" and remote["matrix"] == local["matrix"]
    assert remote["pairs"] == local["pairs"]
    args[0] = "compare"
    assert main([*args, "--ray", "--out", str(tmp_path / "compare")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "compare" / "report.json").read_text())
    assert report["meta"]["options"]["executor"] == "ray"
    assert np.array_equal(np.asarray(report["matrix"]), np.asarray(local["matrix"])[:3, 3:])  # the (m0, m1) block
