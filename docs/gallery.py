"""Regenerate the documentation's figure gallery from small real runs of the offline models.

Usage: ``python docs/gallery.py OUT_DIR [--cache-dir DIR]``.  Writes the figures, the summary
text and a ``stamp`` file into ``OUT_DIR``; ``docs/hooks.py`` runs this script during
``mkdocs build`` whenever the package or this script changed since the last run, so the
pictures in the docs always come from the code being documented.

One run: SmolLM2-135M, Gemma-3-270M and all-MiniLM-L6-v2 (the three offline aliases) on 128
paragraphs of ``builtin:stdlib-docs`` cut to 32 tokens.  Each model is loaded, extracted and
searched once (at k = 21, the largest k of the sweep + 1); every figure below reuses those
neighbour lists.  About a minute on two CPU cores with an empty cache, seconds with a warm one.

The ``--8<--`` markers delimit the code shown next to each figure on the gallery page.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import layerknn


def build(out: Path, cache_dir: Path) -> dict:
    """Run the three models once and write every gallery figure into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # --8<-- [start:zoo]
    cache = str(cache_dir)   # activations and neighbour lists on disk: a rerun loads no model
    z = layerknn.zoo(["smollm2-135m", "gemma3-270m", "minilm-l6"], "builtin:stdlib-docs?n=128",
                     k=10, max_length=32, bootstrap=200, permutations=100, cache=cache)
    z.plot_matrix(out / "zoo_matrix.png", dpi=110)
    z.plot_unit_square(out / "unit_square.png")
    # --8<-- [end:zoo]
    # --8<-- [start:pair]
    c = z.comparison("smollm2-135m", "gemma3-270m")   # = layerknn.compare(...) with the same options
    c.plot(out / "heatmap.png", dpi=110)
    c.plot_depth(out / "depth.png", dpi=110)
    (out / "summary.txt").write_text(c.summary() + "\n")
    # --8<-- [end:pair]
    # --8<-- [start:encoder]
    z.comparison("smollm2-135m", "minilm-l6").plot(out / "heatmap_encoder.png", dpi=110)
    # --8<-- [end:encoder]
    # --8<-- [start:sweep]
    sweep = layerknn.sweep_k("smollm2-135m", "gemma3-270m", "builtin:stdlib-docs?n=128", ks=(1, 2, 5, 10, 20),
                             max_length=32, bootstrap=200, permutations=100, cache=cache)
    from layerknn.plot import k_sweep

    k_sweep(sweep, out / "k_sweep.png", dpi=110)
    # --8<-- [end:sweep]
    return {"seconds": round(time.perf_counter() - start, 1), "verdict": c.verdict()["verdict"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the figures")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="layerknn cache root (default: OUT/../cache)")
    args = parser.parse_args(argv)
    info = build(args.out, args.cache_dir or args.out.parent / "cache")
    print(f"gallery: {args.out} in {info['seconds']} s (verdict {info['verdict']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
