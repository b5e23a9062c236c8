"""One set of defaults: the README's table, the library's signatures and the CLI all agree with DEFAULTS."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest

import layerknn
from layerknn.cli import build_parser
from layerknn.options import DEFAULTS, check_count

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_defaults() -> dict:
    text = README.read_text()
    table = text[text.index("## Options and their defaults"):text.index("## Reading the results")]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `?([^|`]+?)`? \|", table, re.M)}


@pytest.mark.skipif(not README.is_file(), reason="README not shipped with this install")
def test_readme_table_matches_defaults():
    table = readme_defaults()
    assert set(table) == {f.name for f in fields(DEFAULTS)}
    for f in fields(DEFAULTS):
        assert table[f.name] == str(getattr(DEFAULTS, f.name)), f.name


@pytest.mark.parametrize("function", [layerknn.zoo, layerknn.sweep_k])
def test_library_signatures_take_their_defaults_from_one_place(function):
    params = inspect.signature(function).parameters
    for f in fields(DEFAULTS):
        if f.name in params:
            assert params[f.name].default == getattr(DEFAULTS, f.name), (function.__name__, f.name)


def test_cli_defaults_are_the_library_defaults():
    parser = build_parser()
    args = parser.parse_args(["compare", "a", "b"])
    assert int(args.k) == DEFAULTS.k and args.bootstrap == DEFAULTS.bootstrap
    assert args.permutations == DEFAULTS.permutations and args.seed == DEFAULTS.seed
    assert args.dtype == DEFAULTS.dtype and args.pooling == DEFAULTS.pooling
    assert args.batch_size == DEFAULTS.batch_size and args.trust_remote_code == DEFAULTS.trust_remote_code
    assert args.max_length is None and DEFAULTS.max_length is None and not args.no_cache


def test_check_count_messages():
    with pytest.raises(TypeError, match="n_boot must be an integer, got float"):
        check_count(1.0, "n_boot")
    with pytest.raises(TypeError, match="got bool"):
        check_count(True, "k")
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        check_count(0, "k", 1)
