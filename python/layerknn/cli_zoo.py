"""What ``layerknn zoo`` writes and prints: one set of files per dataset, swapped in as one output folder.

With one dataset the files go straight into ``--out`` (as they always did); with several,
each dataset gets a subfolder named after it (``builtin:stdlib-docs?n=64`` ->
``builtin-stdlib-docs-n-64``), and the whole folder is built aside and swapped in at once.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .store import output_folder

__all__ = ["write_zoos", "folder_names"]


def folder_names(datasets) -> list[str]:
    """A distinct, filesystem-safe folder name per dataset name.

    Examples
    --------
    >>> folder_names(["builtin:stdlib-docs?n=64", "data/prompts.txt", "prompts.txt"])
    ['builtin-stdlib-docs-n-64', 'prompts.txt', 'prompts.txt-2']
    """
    names: list[str] = []
    for name in datasets:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(str(name).rstrip("/")) or str(name))
        base = base.strip("-.") or "data"
        names.append(base if base not in names else f"{base}-{len(names)}")
    return names


def _write_zoo(z, folder: Path, bins: int, start: float) -> None:
    z.plot_matrix(folder / "matrix.png")
    z.plot_unit_square(folder / "unit_square.png", bins=bins)
    for (i, j), c in z.pairs.items():
        c.plot(folder / f"heatmap-{i}-{j}.png")
    z.save(folder / "zoo.npz")
    z.meta["seconds"]["total"] = round(time.perf_counter() - start, 3)
    (folder / "report.json").write_text(json.dumps(z.to_dict(), indent=1, allow_nan=False))


def write_zoos(found: dict, out: str, bins: int, start: float) -> None:
    """Write every dataset's figures, zoo.npz and report.json into ``out``; print each pair's summary."""
    many = len(found) > 1
    folders = folder_names(found)
    with output_folder(out, {"command": "zoo", **({"datasets": dict(zip(folders, found))} if many else {})}) as tmp:
        for folder, z in zip(folders, found.values()):
            if many:
                (tmp / folder).mkdir()
            _write_zoo(z, tmp / folder if many else tmp, bins, start)
    for name, z in found.items():
        for (i, j), c in z.pairs.items():
            print(f"== {z.names[i]} vs {z.names[j]}" + (f" on {name}" if many else ""))
            print(c.summary())
            print()
    where = f"{out}/" + ("<dataset>/" if many else "")
    print(f"wrote {where}matrix.png, unit_square.png, heatmap-*.png, zoo.npz, report.json "
          f"in {time.perf_counter() - start:.1f} s" + (f" for {len(found)} datasets ({', '.join(folders)})"
                                                         if many else ""))
