"""Figures for comparisons: layer heatmap, best-match depth curves, the zoo matrix and unit square.

Matplotlib with the non-interactive Agg backend (safe on headless machines); each
function writes one image file (format from the suffix: .png, .pdf, .svg) and returns its
path.  Styling aims at print: labelled axes in layer indices and normalised depth, chance
marked on the colour scale, model names and run settings in the title.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - annotations only; figures read objects, never analysis modules
    from .alignment import Alignment
    from .comparison import Comparison
    from .zoo import Zoo

__all__ = ["heatmap", "depth_curve", "unit_square", "zoo_matrix", "k_sweep"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int):
    """Write ``fig`` to ``path`` (creating its folder) or to a binary file object (PNG), close it, return ``path``."""
    if hasattr(path, "write"):
        fig.savefig(path, dpi=dpi, format="png")
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def _depth_ticks(num_layers: int) -> tuple[np.ndarray, list[str]]:
    depths = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    return depths * num_layers, [f"{d:g}" for d in depths]


def _layer_ticks(num_layers: int) -> np.ndarray:
    step = 1 if num_layers <= 12 else (2 if num_layers <= 24 else 5)
    return np.arange(0, num_layers + 1, step)


def _subtitle(c: "Comparison") -> str:
    parts = [f"n={c.n}", f"k={c.k}"]
    if c.pooling:
        parts.append(f"pooling={c.pooling}")
    text = ", ".join(parts)
    if c.dataset:
        text += ("\n" if len(text) + len(c.dataset) > 55 else ", ") + f"data={c.dataset}"
    return text


def heatmap(c: "Comparison", path: "str | os.PathLike", *, dpi: int = 200, cmap: str = "viridis",
            show_path: bool = True, title: str | None = None, alignment: "Alignment | None" = None) -> Path:
    """Layers of A (rows) x layers of B (columns) similarity heatmap.

    Overlays the depth diagonal (``l_a / L_a = l_b / L_b``, dashed), each A layer's
    best-matching B layer (white dots) and, when given, an alignment's matched B layer per
    A layer (pink line; fractional for an OT coupling) with its bootstrap band; chance
    ``k/(n-1)`` is marked on the colour bar.  Top and right axes give normalised depth.
    """
    plt = _pyplot()
    la, lb = c.num_layers_a, c.num_layers_b
    width = 3.2 + 5.0 * min(1.6, max(0.6, (lb + 1) / max(la + 1, 1)))
    fig, ax = plt.subplots(figsize=(width, 6.0), layout="constrained")
    # Colour range from the blocks: the embedding row/column is often tie-dominated (last-token
    # pooling maps every prompt ending in the same token to one vector) and would wash out the rest.
    blocks_max = float(c.matrix[1:, 1:].max())
    vmax = max(blocks_max, c.chance * 1.05)
    clipped = float(c.matrix.max()) > vmax
    im = ax.imshow(c.matrix, origin="lower", cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto",
                   interpolation="nearest", extent=(-0.5, lb + 0.5, -0.5, la + 0.5))
    ax.axhline(0.5, color="white", lw=0.8, alpha=0.9)
    ax.axvline(0.5, color="white", lw=0.8, alpha=0.9)
    if clipped:
        ax.text(0, 0, f"{c.matrix[0, 0]:.2f}", color="black", ha="center", va="center", fontsize=5.5)
    ax.plot([0, lb], [0, la], ls="--", lw=1.2, color="white", alpha=0.8)
    null = getattr(c, "calibration", None)
    if null is not None:  # hatch the block cells that are not above chance family-wise
        weak = np.nan_to_num(null.p_adjusted, nan=1.0) > 0.05
        for i, j in zip(*np.nonzero(weak[1:, 1:])):
            ax.add_patch(plt.Rectangle((j + 0.5, i + 0.5), 1, 1, fill=False, hatch="////", ec="white", lw=0,
                                       alpha=0.8))
    if alignment is not None:
        if alignment.bands is not None:
            ax.fill_betweenx(alignment.layers_a, alignment.bands["depth_low"] * lb, alignment.bands["depth_high"] * lb,
                             color=_ALIGN_COLOUR, alpha=0.3, lw=0)
        ax.plot(alignment.matched_layer, alignment.layers_a, "-", color=_ALIGN_COLOUR, lw=1.5)
    if show_path:
        bm = c.best_match(include_embeddings=False)
        ax.plot(bm["a_to_b"], bm["layers_a"], "o", ms=3.5, color="white", mec="black", mew=0.5)
    ax.set_xlabel(f"{c.name_b} layer (B)")
    ax.set_ylabel(f"{c.name_a} layer (A)")
    ax.set_xticks(_layer_ticks(lb))
    ax.set_yticks(_layer_ticks(la))
    ax.set_xlim(-0.5, lb + 0.5)
    ax.set_ylim(-0.5, la + 0.5)
    top = ax.secondary_xaxis("top", functions=(lambda x: x / lb, lambda d: d * lb))
    top.set_xlabel("normalised depth (B)")
    right = ax.secondary_yaxis("right", functions=(lambda y: y / la, lambda d: d * la))
    right.set_ylabel("normalised depth (A)")
    cbar = fig.colorbar(im, ax=ax, pad=0.02, fraction=0.05, extend="max" if clipped else "neither")
    cbar.set_label("mean k-NN overlap  |N_A ∩ N_B| / k", fontsize=9)
    cbar.ax.axhline(c.chance, color="red", lw=2.5)
    # proxies in dark colours: the overlays themselves are white, invisible on the page
    handles = [plt.Line2D([], [], ls="--", color="0.35", lw=1.2)]
    labels = ["equal normalised depth (diagonal)"]
    if show_path:
        handles.append(plt.Line2D([], [], ls="none", marker="o", ms=4, mfc="white", mec="black", mew=0.6))
        labels.append("best B block for each A block")
    if alignment is not None:
        handles.append(plt.Line2D([], [], color=_ALIGN_COLOUR, lw=1.5))
        labels.append(_alignment_label(alignment))
    if null is not None:
        handles.append(plt.Rectangle((0, 0), 1, 1, fill=False, hatch="////", ec="0.35"))
        labels.append(f"not above chance family-wise (max-statistic p > 0.05, {null.n_perm} shuffles)")
    handles.append(plt.Line2D([], [], color="red", lw=2.5))
    labels.append(f"chance k/(n-1) = {c.chance:.4f} (colour bar)")
    if clipped:
        handles.append(plt.Line2D([], [], ls="none"))
        labels.append("row/col 0 = embeddings (colour scale set by the blocks)")
    fig.legend(handles, labels, loc="outside lower center", ncol=2 if len(labels) <= 4 else 1, fontsize=7,
               frameon=False)
    ax.set_title(title or f"{c.name_a} vs {c.name_b}\n{_subtitle(c)}", fontsize=10)
    return save_figure(fig, path, dpi)


_ALIGN_COLOUR = "#ff4fa3"  # pink: visible on every viridis colour and apart from the white overlays


def _alignment_label(al: "Alignment") -> str:
    what = {"argmax": "best matches", "monotone": "best monotone path",
            "ot": "OT coupling, barycentric match"}[al.method] + (f" (reg {al.reg:g})" if al.reg is not None else "")
    band = f", band: {int(round(al.bands['level'] * 100))}% bootstrap CI" if al.bands is not None else ""
    return f"{what}: mean matched similarity {al.score:.3f}{band}"


def depth_curve(c: "Comparison", path: "str | os.PathLike", *, dpi: int = 200, title: str | None = None) -> Path:
    """Best-match normalised depth in the other model vs depth, both directions, with CI bands."""
    plt = _pyplot()
    geometry = c.geometry()
    include = geometry["include_embeddings"]
    bm = c.best_match(include_embeddings=include)
    da = c.depth_alignment(**geometry)
    fig, ax = plt.subplots(figsize=(5.6, 5.8), layout="constrained")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="y = x")
    curves = (
        ("a", bm["layers_a"] / c.num_layers_a, bm["a_to_b_depth"], "ab",
         f"A→B: {c.name_a} → best {c.name_b} (ρ={da['spearman_ab']:.2f})", "tab:blue"),
        ("b", bm["layers_b"] / c.num_layers_b, bm["b_to_a_depth"], "ba",
         f"B→A: {c.name_b} → best {c.name_a} (ρ={da['spearman_ba']:.2f})", "tab:orange"),
    )
    for _, x, y, key, label, color in curves:
        ax.plot(x, y, "o-", ms=3.5, lw=1.2, color=color, label=label)
        if c.ci is not None:
            ax.fill_between(x, c.ci[f"best_depth_{key}_low"], c.ci[f"best_depth_{key}_high"], color=color,
                            alpha=0.2, lw=0)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("normalised depth of source layer (l / L)")
    ax.set_ylabel("normalised depth of its best match in the other model")
    band = f"\nbands: {int(round(c.ci['level'] * 100))}% bootstrap CI over prompts" if c.ci else ""
    ax.set_title(title or f"Best-match depth: {c.name_a} vs {c.name_b}\n{_subtitle(c)}{band}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi)


def unit_square(grid: np.ndarray, path: "str | os.PathLike", *, chance: float | None = None,
                model_names: Sequence[str] = (), subtitle: str = "", dpi: int = 200) -> Path:
    """Mean similarity binned over (normalised depth in model 1, normalised depth in model 2).

    Parameters
    ----------
    grid : float array, shape (bins, bins)
        Mean similarity per bin (NaN where no cell fell), rows = depth in model 1.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.2), constrained_layout=True)
    vmax = np.nanmax(grid) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0, vmax=vmax,
                   interpolation="nearest")
    ax.set_facecolor("0.88")  # empty bins (no layer pair at that depth combination) show grey
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.3", alpha=0.9)
    ax.set_xlabel("normalised depth in model 2")
    ax.set_ylabel("normalised depth in model 1")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("mean k-NN overlap")
    if chance is not None:
        cbar.ax.axhline(chance, color="red", lw=2)
    names = ", ".join(model_names)
    ax.set_title(f"Layer similarity across all model pairs by normalised depth (both orders; grey: empty)"
                 f"\n{names}\n{subtitle}", fontsize=8)
    return save_figure(fig, path, dpi)


def zoo_matrix(z: "Zoo", path: "str | os.PathLike", *, dpi: int = 200) -> Path:
    """Heatmap of a zoo's full block matrix (all layers of all models) with model boundaries."""
    plt = _pyplot()
    size = z.matrix.shape[0]
    fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    offdiag = z.matrix[~np.eye(size, dtype=bool)]
    im = ax.imshow(z.matrix, origin="lower", cmap="viridis", vmin=0,
                   vmax=float(offdiag.max()) if offdiag.size else 1.0, interpolation="nearest")
    for off in z.offsets[1:]:
        ax.axhline(off - 0.5, color="white", lw=1)
        ax.axvline(off - 0.5, color="white", lw=1)
    centres = [off + layers / 2 for off, layers in zip(z.offsets, z.num_layers)]
    ax.set_xticks(centres, z.names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(centres, z.names, fontsize=8)
    cbar = fig.colorbar(im, ax=ax, extend="max")
    cbar.set_label(f"mean k-NN overlap (colour scale capped at the largest off-diagonal value; "
                   f"red: chance {z.chance:.3f})", fontsize=7)
    cbar.ax.axhline(z.chance, color="red", lw=2)
    data = f", data={z.dataset}" if z.dataset else ""
    ax.set_title(f"All layers of all models (embeddings first in each block)\n"
                 f"n={z.n}, k={z.k}, pooling={z.pooling}{data}", fontsize=9)
    return save_figure(fig, path, dpi)


def k_sweep(sweep: "dict[int, Comparison]", path: "str | os.PathLike", *, dpi: int = 200) -> Path:
    """Depth-tracking statistics against k: Spearman both ways (with CIs) and near/far similarity over chance."""
    plt = _pyplot()
    ks = sorted(sweep)
    first = sweep[ks[0]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.2), layout="constrained")
    for key, label, color in (("spearman_ab", "Spearman A→B", "tab:blue"), ("spearman_ba", "Spearman B→A",
                                                                            "tab:orange")):
        values = [sweep[k].depth_alignment(**sweep[k].geometry())[key] for k in ks]
        left.plot(ks, values, "o-", color=color, label=label)
        if all(sweep[k].ci is not None for k in ks):
            lows = [sweep[k].ci["stats"][key][0] for k in ks]
            highs = [sweep[k].ci["stats"][key][1] for k in ks]
            left.fill_between(ks, lows, highs, color=color, alpha=0.2, lw=0)
    left.axhline(0, color="grey", lw=0.8)
    left.set_ylim(-1.05, 1.05)
    left.set_ylabel("best-match depth tracking (Spearman)")
    for key, label, color in (("near_mean", "near diagonal", "tab:green"), ("far_mean", "far from diagonal",
                                                                            "tab:red")):
        ratio = [sweep[k].depth_alignment(**sweep[k].geometry())[key] / sweep[k].chance for k in ks]
        right.plot(ks, ratio, "o-", color=color, label=label)
    right.axhline(1, color="grey", lw=0.8, ls="--", label="chance")
    right.set_ylabel("mean similarity / chance k/(n-1)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (neighbours per prompt)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{first.name_a} vs {first.name_b}: does it hold across k? (n={first.n})", fontsize=10)
    return save_figure(fig, path, dpi)
