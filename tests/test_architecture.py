"""The package's shape: imports inside layerknn form no cycle (lazy imports included), modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import layerknn

PACKAGE = Path(layerknn.__file__).resolve().parent
SOURCES = sorted(PACKAGE.glob("*.py"))


def internal_imports(path: Path) -> set[str]:
    """Sibling modules ``path`` imports anywhere (functions too), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_ImportFrom(self, node):
            if node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])

    Visitor().visit(ast.parse(path.read_text()))
    return found - {path.stem}


def test_no_import_cycle():
    graph = {p.stem: internal_imports(p) for p in SOURCES}
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep in graph and dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "store" in graph and graph["store"] == set()  # the format module depends on nothing above it


def test_figures_and_files_import_nothing_above_them():
    analysis = {"stats", "bootstrap", "calibration", "verdict", "report"}
    orchestration = {"compare", "zoo", "sweep", "comparison", "sources", "cli"}
    assert not internal_imports(PACKAGE / "plot.py") & (analysis | orchestration)
    assert not internal_imports(PACKAGE / "persist.py") & orchestration


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_modules_stay_one_screen_of_ideas(path):
    assert len(path.read_text().splitlines()) <= 450, f"{path.name}: split it along the seam where its imports differ"
