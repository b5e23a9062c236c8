"""What a Comparison or a Zoo file holds, and the value checks applied when one is read.

Objects go in, plain arrays and checked constructor arguments come out: this module builds
no Comparison or Zoo itself (the classes' ``load`` do), so it imports nothing above it.

:mod:`layerknn.store` guarantees a file is intact and of the right kind; this module maps
the objects to arrays + JSON metadata and back, and refuses contents that cannot be right
(counts above k, a matrix that disagrees with its counts or neighbour lists, p-values
outside (0, 1], shapes that do not fit), naming the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .report import jsonable
from .store import FormatError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .comparison import Comparison
    from .zoo import Zoo

__all__ = ["comparison_arrays", "comparison_parts", "zoo_arrays", "zoo_parts"]

_OPTIONAL = ("neighbors_a", "neighbors_b", "tie_rate_a", "tie_rate_b")
_NULL_ARRAYS = ("observed", "null_mean", "null_std", "p_values", "p_adjusted", "calibrated", "max_null")


def _ci_split(ci: dict | None, prefix: str) -> tuple[dict, dict | None]:
    if ci is None:
        return {}, None
    arrays = {f"{prefix}{key}": np.asarray(v) for key, v in ci.items() if isinstance(v, np.ndarray)}
    scalars = {key: v for key, v in ci.items() if not isinstance(v, np.ndarray)}
    return arrays, jsonable(scalars)


def _ci_join(arrays: dict, scalars: dict | None, prefix: str) -> dict | None:
    if scalars is None:
        return None
    ci = dict(scalars)
    ci["stats"] = {key: tuple(np.nan if x is None else x for x in v) for key, v in scalars["stats"].items()}
    for key, value in arrays.items():
        if key.startswith(prefix):
            ci[key[len(prefix):]] = value
    return ci


def _null_split(null, prefix: str) -> tuple[dict, dict | None]:
    """A PermutationNull as arrays (``prefix`` + field) and JSON (scalars, Spearman statistics)."""
    if null is None:
        return {}, None
    arrays = {f"{prefix}{name}": np.asarray(getattr(null, name)) for name in _NULL_ARRAYS}
    for key, samples in null.spearman_null.items():
        arrays[f"{prefix}spearman_null_{key}"] = np.asarray(samples)
    scalars = {"p_family": null.p_family, "spearman": null.spearman, "spearman_p": null.spearman_p,
               "n_perm": null.n_perm, "seed": null.seed, "k": null.k, "include_embeddings": null.include_embeddings}
    return arrays, jsonable(scalars)


def _null_join(arrays: dict, scalars: dict | None, prefix: str, shape: tuple, where: str):
    if scalars is None:
        return None
    from .calibration import PermutationNull

    fields = {name: arrays[f"{prefix}{name}"] for name in _NULL_ARRAYS}
    for name in ("observed", "null_mean", "null_std", "p_values", "p_adjusted", "calibrated"):
        if fields[name].shape != shape:
            raise FormatError(f"{where}: {prefix}{name} must have shape {shape}, got {fields[name].shape}")
    p = fields["p_values"]
    if not np.all((p > 0) & (p <= 1)) or not 0 < float(scalars["p_family"]) <= 1:
        raise FormatError(f"{where}: p-values must lie in (0, 1]")
    spearman_null = {key[len(prefix) + len("spearman_null_"):]: value for key, value in arrays.items()
                     if key.startswith(f"{prefix}spearman_null_")}
    nan = float("nan")
    return PermutationNull(**fields, p_family=float(scalars["p_family"]),
                           spearman={k: nan if v is None else v for k, v in scalars["spearman"].items()},
                           spearman_p=dict(scalars["spearman_p"]), spearman_null=spearman_null,
                           n_perm=int(scalars["n_perm"]), seed=scalars["seed"], k=int(scalars["k"]),
                           include_embeddings=bool(scalars["include_embeddings"]))


def comparison_arrays(c: "Comparison") -> tuple[dict, dict]:
    """(arrays, meta) for :func:`layerknn.store.write`; per-prompt counts only when there are no neighbours."""
    arrays: dict[str, np.ndarray] = {"matrix": c.matrix}
    for key in _OPTIONAL:
        value = getattr(c, key)
        if value is not None:
            arrays[key] = np.asarray(value)
    if c.neighbors_a is None and c._per_prompt is not None:
        arrays["per_prompt"] = np.asarray(c._per_prompt)
    ci_arrays, ci_meta = _ci_split(c.ci, "ci_")
    arrays.update(ci_arrays)
    null_arrays, null_meta = _null_split(c.calibration, "null_")
    arrays.update(null_arrays)
    meta = {"names": list(c.names), "num_layers": [c.num_layers_a, c.num_layers_b], "n": c.n, "k": c.k,
            "measure": c.measure, "dataset": c.dataset, "pooling": c.pooling, "ci": ci_meta, "calibration": null_meta,
            "meta": jsonable(c.meta)}
    return arrays, meta


def _check_values(arrays: dict, n: int, k: int, shape: tuple[int, int], where: str, measure: str) -> None:
    matrix = arrays["matrix"]
    if matrix.shape != shape:
        raise FormatError(f"{where}: matrix has shape {matrix.shape}, its metadata says {shape}")
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0 or matrix.max() > 1:
        raise FormatError(f"{where}: matrix values must lie in [0, 1]")
    for side, layers in (("a", shape[0]), ("b", shape[1])):
        nb = arrays.get(f"neighbors_{side}")
        if nb is not None and (nb.shape != (layers, n, k) or nb.min() < 0 or nb.max() >= n):
            raise FormatError(f"{where}: neighbors_{side} must be indices in [0, {n}) of shape {(layers, n, k)}, "
                              f"got shape {nb.shape}")
    counts = arrays.get("per_prompt")
    top = k if measure == "mutual" else 1
    if counts is not None:
        if counts.shape != shape + (n,) or counts.max(initial=0) > top or counts.min(initial=0) < 0:
            raise FormatError(f"{where}: per_prompt must hold counts in [0, k={k}] of shape {shape + (n,)}"
                              if measure == "mutual" else f"{where}: per_prompt must hold scores in [0, 1]")
        if not np.allclose(counts.sum(axis=-1, dtype=np.float64) / (n * top), matrix, rtol=0, atol=1e-6):
            raise FormatError(f"{where}: matrix disagrees with its per-prompt counts")
    if "neighbors_a" in arrays and "neighbors_b" in arrays:
        from .overlap import overlap

        if not np.allclose(overlap(arrays["neighbors_a"], arrays["neighbors_b"], k, measure=measure), matrix,
                           rtol=0, atol=1e-12):
            raise FormatError(f"{where}: matrix disagrees with its neighbour lists")


def comparison_parts(arrays: dict, meta: dict, where: str) -> dict:
    """A Comparison file's checked contents: ``init`` (constructor arguments), ``ci`` and ``calibration``.

    Every value is checked first (FormatError naming ``where``).
    """
    try:
        la, lb = (int(x) for x in meta["num_layers"])
        n, k = int(meta["n"]), int(meta["k"])
        measure = str(meta.get("measure", "mutual"))
        _check_values(arrays, n, k, (la + 1, lb + 1), where, measure)
        neighbors = None
        if "neighbors_a" in arrays and "neighbors_b" in arrays:
            neighbors = (arrays["neighbors_a"], arrays["neighbors_b"])
        init = {"matrix": arrays["matrix"], "n": n, "k": k, "names": meta["names"], "num_layers": (la, lb),
                "per_prompt": arrays.get("per_prompt"), "neighbors": neighbors,
                "tie_rates": (arrays.get("tie_rate_a"), arrays.get("tie_rate_b")),
                "dataset": meta.get("dataset"), "pooling": meta.get("pooling"), "meta": meta.get("meta"),
                "measure": measure}
        null = _null_join(arrays, meta.get("calibration"), "null_", (la + 1, lb + 1), where)
        if null is not None and not np.array_equal(null.observed, arrays["matrix"]):
            raise FormatError(f"{where}: the calibration was computed on another matrix")
        return {"init": init, "ci": _ci_join(arrays, meta.get("ci"), "ci_"), "calibration": null}
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: not a valid layerknn comparison ({type(exc).__name__}: {exc})") from None


def zoo_arrays(z: "Zoo", include_neighbors: bool = True) -> tuple[dict, dict]:
    """(arrays, meta) of a Zoo: the block matrix, each model's neighbours and tie rates, each pair's statistics."""
    arrays: dict[str, np.ndarray] = {"matrix": z.matrix}
    for i, (nb, ties) in enumerate(zip(z.neighbors, z.tie_rates)):
        if include_neighbors and nb is not None:
            arrays[f"neighbors_{i}"] = nb
        if ties is not None:
            arrays[f"tie_rate_{i}"] = np.asarray(ties)
    pairs = {}
    for (i, j), entry in z.pair_stats.items():
        ci_arrays, ci_meta = _ci_split(entry.get("ci"), f"ci_{i}_{j}_")
        null_arrays, null_meta = _null_split(entry.get("calibration"), f"null_{i}_{j}_")
        arrays.update(ci_arrays)
        arrays.update(null_arrays)
        pairs[f"{i},{j}"] = {"ci": ci_meta, "calibration": null_meta}
    meta = {"names": z.names, "num_layers": z.num_layers, "n": z.n, "k": z.k, "measure": z.measure,
            "dataset": z.dataset,
            "pooling": z.pooling, "pairs": pairs, "meta": jsonable(z.meta)}
    return arrays, meta


def zoo_parts(arrays: dict, meta: dict, where: str) -> dict:
    """A Zoo file's checked contents as the Zoo constructor's arguments (FormatError naming ``where``)."""
    try:
        names, num_layers = list(meta["names"]), [int(x) for x in meta["num_layers"]]
        n, k = int(meta["n"]), int(meta["k"])
        size = sum(x + 1 for x in num_layers)
        matrix = arrays["matrix"]
        if matrix.shape != (size, size) or not np.all(np.isfinite(matrix)) or matrix.min() < 0 or matrix.max() > 1:
            raise FormatError(f"{where}: matrix must hold values in [0, 1] with shape {(size, size)}")
        neighbors, ties = [], []
        for i, layers in enumerate(num_layers):
            nb = arrays.get(f"neighbors_{i}")
            if nb is not None and (nb.shape != (layers + 1, n, k) or nb.min() < 0 or nb.max() >= n):
                raise FormatError(f"{where}: neighbors_{i} must be indices in [0, {n}) of shape {(layers + 1, n, k)}")
            neighbors.append(nb)
            ties.append(arrays.get(f"tie_rate_{i}"))
        pair_stats = {}
        for key, entry in meta["pairs"].items():
            i, j = (int(x) for x in key.split(","))
            shape = (num_layers[i] + 1, num_layers[j] + 1)
            pair_stats[(i, j)] = {"ci": _ci_join(arrays, entry.get("ci"), f"ci_{i}_{j}_"),
                                  "calibration": _null_join(arrays, entry.get("calibration"), f"null_{i}_{j}_",
                                                            shape, f"{where} (pair {i},{j})")}
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: not a valid layerknn zoo ({type(exc).__name__}: {exc})") from None
    return {"names": names, "num_layers": num_layers, "matrix": matrix, "neighbors": neighbors, "tie_rates": ties,
            "pair_stats": pair_stats, "n": n, "k": k, "dataset": meta.get("dataset"), "pooling": meta.get("pooling"),
            "meta": meta.get("meta"), "measure": str(meta.get("measure", "mutual"))}
