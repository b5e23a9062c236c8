"""Runs the ``>>>`` examples in the docstrings of the installed layerknn modules.

Doctests are collected from the imported package (not the source tree) so they exercise the
same compiled build as every other test.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import layerknn

MODULES = sorted(
    name
    for _, name, _ in pkgutil.iter_modules(layerknn.__path__, "layerknn.")
    if not name.rsplit(".", 1)[-1].startswith("_core") and name != "layerknn.__main__"
)


@pytest.mark.parametrize("module_name", ["layerknn", *MODULES])
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {module_name}"
