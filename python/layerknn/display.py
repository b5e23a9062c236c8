"""Rich display of comparisons and zoos in notebooks (HTML with an inline heatmap) and terminals.

Nothing is written to disk: figures are rendered into memory and embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .comparison import Comparison
    from .zoo import Zoo

__all__ = ["comparison_html", "zoo_html"]


def _png(draw, obj, **kwargs) -> str:
    buffer = io.BytesIO()
    draw(obj, buffer, dpi=kwargs.pop("dpi", 80), **kwargs)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _rows(pairs) -> str:
    return "".join(f"<tr><th style='text-align:left'>{html.escape(str(key))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(value))}</td></tr>" for key, value in pairs)


def comparison_html(c: "Comparison") -> str:
    """A settings/verdict table beside the heatmap, for Jupyter's ``_repr_html_``."""
    v = c.verdict()
    da = c.depth_alignment(**c.geometry())
    table = _rows([
        ("models", f"A = {c.name_a} ({c.num_layers_a} blocks), B = {c.name_b} ({c.num_layers_b} blocks)"),
        ("prompts", f"n = {c.n}, k = {c.k}, chance k/(n-1) = {c.chance:.4f}"),
        ("data / pooling", f"{c.dataset or 'n/a'} / {c.pooling or 'n/a'}"),
        ("max over blocks", f"{c.matrix[1:, 1:].max():.3f} ({c.matrix[1:, 1:].max() / c.chance:.1f}x chance)"),
        ("Spearman A→B, B→A", f"{da['spearman_ab']:.3f}, {da['spearman_ba']:.3f}"),
        ("verdict", f"{v['verdict'].upper()}: {v['basis']}"),
    ])
    image = _png(lambda obj, buffer, **kwargs: obj.plot(buffer, **kwargs), c)  # the heatmap with its overlays
    return (f"<div style='display:flex;gap:1em;align-items:flex-start'><table>{table}</table>"
            f"<img src='data:image/png;base64,{image}' style='max-width:480px'/></div>")


def zoo_html(z: "Zoo") -> str:
    """The zoo's models and layer counts beside its block matrix."""
    from .plot import zoo_matrix

    table = _rows([(name, f"{layers} blocks") for name, layers in zip(z.names, z.num_layers)]
                  + [("prompts", f"n = {z.n}, k = {z.k}, chance {z.chance:.4f}")])
    image = _png(zoo_matrix, z)
    return (f"<div style='display:flex;gap:1em;align-items:flex-start'><table>{table}</table>"
            f"<img src='data:image/png;base64,{image}' style='max-width:480px'/></div>")
