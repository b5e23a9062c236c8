"""``--timings`` and lean imports: the phase table adds up, and cached reruns skip the heavy packages.

``import layerknn`` must not load torch, transformers, matplotlib or ray; a rerun whose
neighbour lists come from the cache must not load transformers or torch (no model, no
extraction), and a compare of activation files never loads transformers. Each check runs in a
fresh interpreter, since this one has long imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layerknn
from layerknn import Cache, datasets, timings

# The folder holding the package this test imported (the source tree in development, site-packages
# when installed), so the fresh interpreters import the same, built, package.
PYTHON_DIR = Path(layerknn.__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "matplotlib", "ray")


def fresh_python(code: str, cache_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TQDM_DISABLE="1", LAYERKNN_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def cli_in_fresh_python(args: list, cache_dir: Path) -> tuple[str, set]:
    """(stdout of ``layerknn`` with ``args``, the heavy packages it imported)."""
    code = (f"import sys; from layerknn.cli import main; code = main({[str(a) for a in args]!r}); "
            f"print('HEAVY', *[m for m in {HEAVY!r} if m in sys.modules]); sys.exit(code)")
    out = fresh_python(code, cache_dir).stdout
    heavy = next(line for line in out.splitlines() if line.startswith("HEAVY")).split()[1:]
    return out, set(heavy)


def phase_table(out: str) -> dict[str, tuple[float, float | None]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("timings ("))
    rows = {}
    for line in lines[start + 2:]:
        parts = line.rsplit(None, 2)
        if line.startswith("total (process wall)"):
            rows["total"] = (float(line.split()[-1]), None)
            break
        if line.startswith("python start-up"):
            rows["python start-up + imports"] = (float(line.split()[-1]), None)
            continue
        rows[parts[0].strip()] = (float(parts[1]), float(parts[2]))
    return rows


def test_import_layerknn_loads_no_heavy_package(tmp_path):
    code = f"import sys, layerknn; print(*[m for m in {HEAVY!r} if m in sys.modules])"
    assert fresh_python(code, tmp_path).stdout.split() == []


def test_extract_stays_the_function_after_its_module_is_imported():
    import importlib

    import layerknn

    module = importlib.import_module("layerknn.extract")
    assert layerknn.extract is module.extract and callable(layerknn.extract)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import tiny_models as tiny

    path = tmp_path_factory.mktemp("models") / "llama"
    model, tokenizer = tiny.build("llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_timings_cover_the_run_and_a_cached_rerun_loads_no_model(tmp_path, tiny_llama):
    args = ["compare", tiny_llama, tiny_llama, "--data", "builtin:random-strings?n=40", "--k", "4",
            "--max-length", "16", "--bootstrap", "30", "--permutations", "8", "--no-progress", "--timings",
            "--cache-dir", tmp_path / "cache"]
    cold, heavy = cli_in_fresh_python([*args, "--out", tmp_path / "o1"], tmp_path / "cache")
    assert {"torch", "transformers", "matplotlib"} <= heavy
    table = phase_table(cold)
    for phase in ("python start-up + imports", "texts", "model load", "extraction", "knn", "overlap",
                  "statistics: bootstrap", "statistics: permutations", "summary + verdict", "figures", "writing",
                  "import torch", "import transformers", "import matplotlib", "other (unphased)"):
        assert phase in table, (phase, cold)
    assert all(w >= 0 and (c is None or c >= 0) for w, c in table.values())
    parts = sum(w for name, (w, _) in table.items() if name != "total")
    assert parts <= table["total"][0] + 0.01 * len(table)  # the rows are rounded to 10 ms each

    cached, heavy = cli_in_fresh_python([*args, "--out", tmp_path / "o2"], tmp_path / "cache")
    assert "transformers" not in heavy and "torch" not in heavy, cached
    table = phase_table(cached)
    assert "cache reads" in table and "extraction" not in table and "model load" not in table
    first, second = (json.loads((tmp_path / o / "report.json").read_text()) for o in ("o1", "o2"))
    assert second["matrix"] == first["matrix"] and second["meta"]["model_a"]["cache"] == "neighbors"


@pytest.mark.slow
def test_compare_of_activation_files_never_imports_transformers(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, layers in (("a", 3), ("b", 2)):
        paths.append(tmp_path / f"{name}.npz")
        np.savez(paths[-1], values=rng.standard_normal((layers + 1, 30, 8)).astype(np.float32))
    out, heavy = cli_in_fresh_python(["compare", *paths, "--k", "3", "--bootstrap", "10", "--permutations", "0",
                                      "--no-progress", "--out", tmp_path / "o"], tmp_path / "cache")
    assert "transformers" not in heavy and "ray" not in heavy and "wrote" in out


def test_texts_roundtrip_through_the_cache(tmp_path):
    cache = Cache(tmp_path)
    texts = ["plain", "ünïcödé ✓", "", "a\nb", "\ud800 lone surrogate"]
    assert cache.get_texts("k1") is None
    cache.put_texts("k1", texts)
    assert cache.get_texts("k1") == texts
    cache.put_texts("empty", [])
    assert cache.get_texts("empty") == []
    assert cache.clear() == 2 and cache.get_texts("k1") is None


def test_stdlib_docs_served_from_the_cache_without_parsing(tmp_path, monkeypatch):
    class Unparsed:
        """Stands in for stdlib_paragraphs: nothing held in memory, and parsing fails the test."""

        def cache_info(self):
            return type("Info", (), {"currsize": 0})()

        def __call__(self):
            raise AssertionError("the standard library was parsed although the cache holds it")

    cache = Cache(tmp_path)
    cache.put_texts(datasets._stdlib_key(), [f"Paragraph number {i}." for i in range(50)])
    monkeypatch.setattr(datasets, "stdlib_paragraphs", Unparsed())
    texts = datasets.load_texts("builtin:stdlib-docs?n=5&seed=1", cache=cache)
    assert len(texts) == 5 and all(t.startswith("Paragraph number") for t in texts)
    assert texts == datasets.load_texts("builtin:stdlib-docs?n=5&seed=1", cache=cache)


def test_profile_charges_nested_phases_exclusively():
    seconds = {}
    with timings.Profile() as prof:
        with timings.timed(seconds, "outer"):
            with timings.timed(seconds, "inner"):
                sum(range(200_000))
    rows = {name: wall for name, wall, _ in prof.rows()}
    assert set(rows) == {"outer", "inner", "other (unphased)"}
    assert rows["inner"] == pytest.approx(seconds["inner"], abs=2e-3)
    assert rows["outer"] == pytest.approx(seconds["outer"] - seconds["inner"], abs=2e-3)
    assert sum(rows.values()) == pytest.approx(prof.end - prof.start, abs=1e-6)
    with timings.timed(seconds, "alone"):  # no profile active: only the dict is kept
        pass
    assert seconds["alone"] >= 0 and "alone" not in rows
