"""The documentation site: every public name documented, the CLI page generated from the parsers,
and the whole site built with ``mkdocs build --strict`` — gallery included, from real runs of
the offline models — as CI does."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import layerknn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hooks():
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("layerknn_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(path: str):
    """The object ``::: path`` documents: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)  # an entry that names nothing fails here
        return obj
    raise AssertionError(f"{path} names nothing importable")


def test_api_page_documents_every_public_name():
    documented = []
    for path in re.findall(r"^::: (layerknn[\w.]*)\s*$", (DOCS / "api.md").read_text(), flags=re.M):
        documented.append(_resolve(path))
    missing = [name for name in layerknn.__all__ if not any(getattr(layerknn, name) is obj for obj in documented)]
    assert not missing, f"docs/api.md lacks a '::: layerknn....' entry for {missing}"


def test_cli_page_holds_every_commands_help():
    from layerknn import cli

    page = _hooks().cli_page()
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"compare", "zoo", "models"}
    for name, sub in commands.items():
        assert f"## `layerknn {name}`" in page
        for action in sub._actions:
            for flag in action.option_strings:
                assert re.search(rf"{re.escape(flag)}\b", page), f"{flag} of {name} missing from the CLI page"
    assert page.count("```text") == len(commands) + 1


def test_sphinx_roles_become_optional_links_to_the_documented_objects():
    griffe = pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("layerknn_docs_roles", DOCS / "griffe_roles.py")
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    pkg = griffe.load("layerknn", search_paths=[str(ROOT / "python")],
                      extensions=griffe.load_extensions(roles.SphinxRoles()))
    refs = {name: re.findall(r'<autoref identifier="([\w.]+)" optional>`([\w.]+)`</autoref>', pkg[name].docstring.value)
            for name in ("comparison.Comparison.plot", "sweep.sweep_k", "stats", "stats.spearman")}
    assert ("layerknn.plot.heatmap", "layerknn.plot.heatmap") in refs["comparison.Comparison.plot"]
    assert ("layerknn.comparison.Comparison.alignment", "alignment") in refs["comparison.Comparison.plot"]
    assert ("layerknn.compare.compare", "layerknn.compare") in refs["sweep.sweep_k"]  # the function, not its module
    assert ("layerknn.verdict.depth_verdict", "depth_verdict") in refs["stats"]        # a bare name, found once
    assert ("layerknn.calibration", "layerknn.calibration") in refs["stats"]           # :mod: keeps the module
    assert ("scipy.stats.rankdata", "scipy.stats.rankdata") in refs["stats.spearman"]  # outside: left as is
    assert not re.search(r":(func|class|meth|mod|data|attr|exc):`", pkg["comparison.Comparison"].docstring.value)


@pytest.mark.slow
@pytest.mark.models
def test_docs_build_strictly_with_gallery(tmp_path):
    """The site builds with warnings as errors; the gallery figures come from the models."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    missing = [r["pip"] for r in layerknn.list_aliases()
               if r["alias"] in ("smollm2-135m", "gemma3-270m", "minilm-l6") and not r["installed"]]
    if missing:
        pytest.skip(f"the gallery needs the offline models: {'; '.join(missing)}")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    for name in ("heatmap", "depth", "heatmap_encoder", "k_sweep", "zoo_matrix", "unit_square"):
        assert (site / "gallery" / f"{name}.png").stat().st_size > 10_000
    assert "usage: layerknn compare" in (site / "cli" / "index.html").read_text()
    gallery = (site / "gallery" / "index.html").read_text()
    assert "VERDICT: best matches" in gallery and "permutation null (100 prompt shuffles" in gallery
