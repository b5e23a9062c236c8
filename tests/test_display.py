"""Notebook and terminal display of Comparison and Zoo: rendered in memory, nothing written."""

from __future__ import annotations

import base64
import os
import re

import numpy as np

import layerknn


def test_comparison_html_has_summary_and_inline_png(rng, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = rng.standard_normal((4, 50, 6)).astype(np.float32)
    c = layerknn.compare(a, a, k=4, bootstrap=10, permutations=5, names=("left", "right"))
    page = c._repr_html_()
    assert "left" in page and "right" in page and "verdict" in page
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == []


def test_zoo_html_and_pretty(rng, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    acts = [rng.standard_normal((L + 1, 30, 5)).astype(np.float32) for L in (2, 3, 4)]
    z = layerknn.zoo(acts, k=3, bootstrap=0, permutations=0, names=["x", "y", "w"])
    assert "data:image/png;base64," in z._repr_html_() and "4 blocks" in z._repr_html_()

    class Printer:
        def __init__(self):
            self.parts = []

        def text(self, value):
            self.parts.append(value)

    p = Printer()
    z._repr_pretty_(p, cycle=False)
    assert "x vs w" in p.parts[0]
    p = Printer()
    z.comparison(0, 1)._repr_pretty_(p, cycle=False)
    assert p.parts[0] == z.comparison(0, 1).summary()
    assert os.listdir(tmp_path) == []
