"""Executors: where a zoo's units run — in this process (``"local"``) or as tasks on a Ray cluster.

A *unit* is one model argument turned into its neighbour lists on one dataset (load, extract,
k-NN at k_max; :func:`run_unit`, cached through :class:`~layerknn.cache.Cache`); a run over
several datasets submits every (model, dataset) unit at once.  The local executor
calls :func:`run_unit` in a loop; :class:`layerknn.ray_executor.RayExecutor` runs the same
function as one Ray task per unit and the pair statistics as tasks over chunks of pairs.
Both return the same values bit for bit: each unit and each pair is a pure function of its
inputs (seeded statistics, exact k-NN), wherever it runs.

An executor has two methods: ``map_units(units, texts, progress=, on_done=)`` (``texts``: one
prompt list, or None, per dataset; a unit reads ``texts[unit.dataset]``) returning
``(ModelNeighbors, record)`` per unit in unit order, and ``map_pairs(job, keys, blocks,
neighbors, progress=)`` returning ``{(i, j): job(i, j, ...)}``.  A unit that fails does not
stop the others: every unit finishes (and is cached) first, then :func:`raise_failures`
raises an error naming the model (and its dataset, in a run over several).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .cache import Cache
from .options import ExtractOptions, LoadOptions
from .sources import ModelNeighbors, model_neighbors

__all__ = ["Unit", "run_unit", "LocalExecutor", "raise_failures"]


@dataclass(frozen=True)
class Unit:
    """One model argument to turn into neighbour lists on one dataset (texts travel separately, once each).

    ``index`` is the model's place in the zoo, ``dataset`` the dataset's place in the run and
    ``dataset_name`` its name in a run over several datasets (None in a one-dataset run).
    """

    index: int
    label: str
    model: Any
    k_max: int
    load: LoadOptions
    extract: ExtractOptions
    cache: Cache | None
    dataset: int = 0
    dataset_name: str | None = None


def run_unit(unit: Unit, texts: Sequence[str] | None, progress: bool = False) -> tuple[ModelNeighbors, dict]:
    """Neighbour lists of one unit and its record (name, seconds, host, cache use); the same function everywhere.

    Examples
    --------
    >>> import numpy as np
    >>> acts = np.random.default_rng(0).standard_normal((3, 20, 4)).astype(np.float32)
    >>> side, record = run_unit(Unit(0, "A", acts, 4, LoadOptions(), ExtractOptions(), None), None)
    >>> side.indices.shape, record["name"]
    ((3, 20, 4), 'A')
    """
    start = time.perf_counter()
    side = model_neighbors(unit.model, texts, k_max=unit.k_max, label=unit.label, load=unit.load,
                           extract=unit.extract, cache=unit.cache, progress=progress)
    record = {"index": unit.index, "name": side.name, "seconds": round(time.perf_counter() - start, 3),
              "host": socket.gethostname(), "node": None, "cache": side.info.get("cache")}
    if unit.dataset_name is not None:
        record["dataset"] = unit.dataset_name
    return side, record


def raise_failures(failures: list[tuple[Unit, BaseException]], total: int) -> None:
    """Raise the first unit's error, its message prefixed with the model (same type where possible)."""
    if not failures:
        return
    unit, exc = failures[0]
    others = f" ({len(failures) - 1} more of {total} units failed too)" if len(failures) > 1 else ""
    where = f" on dataset {unit.dataset_name!r}" if unit.dataset_name is not None else ""
    message = f"model {unit.label!r} ({_describe(unit.model)}){where} failed: {exc}{others}"
    try:
        error = type(exc)(message)
    except Exception:  # noqa: BLE001 - an exception type with another constructor: keep its meaning in text
        error = RuntimeError(f"{message} [{type(exc).__name__}]")
    raise error from exc


def _describe(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return repr(os.fspath(model))
    shape = getattr(model, "shape", None)
    return f"{type(model).__name__} of shape {tuple(shape)}" if shape is not None else type(model).__name__


class LocalExecutor:
    """Run every unit and every pair in this process, one after another (the default)."""

    name = "local"

    def __repr__(self) -> str:
        return "LocalExecutor()"

    def map_units(self, units: Sequence[Unit], texts: Sequence[Sequence[str] | None], *, progress: bool,
                  on_done: Callable[[dict], None]) -> list[tuple[ModelNeighbors, dict]]:
        """``(neighbours, record)`` per unit, in unit order; ``on_done(record)`` after each."""
        results: list[Any] = [None] * len(units)
        failures = []
        for position, unit in enumerate(units):
            try:
                results[position] = run_unit(unit, texts[unit.dataset], progress)
            except ImportError as exc:  # a missing package fails every later run too: say so now, not after the rest
                raise_failures([(unit, exc)], len(units))
            except Exception as exc:  # noqa: BLE001 - every unit finishes before the first error is raised
                failures.append((unit, exc))
                continue
            on_done(results[position][1])
        raise_failures(failures, len(units))
        return results

    def map_pairs(self, job: Callable, keys: Sequence[tuple[int, int]], blocks: dict, neighbors: Sequence,
                  *, progress: bool) -> dict:
        """``job(i, j, block, neighbours_i, neighbours_j, progress)`` for every pair ``(i, j)`` in ``keys``."""
        bar = None
        if progress and len(keys) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(keys), desc="pair statistics", unit="pair", leave=False)
        out = {}
        try:
            for i, j in keys:
                out[(i, j)] = job(i, j, blocks[(i, j)], neighbors[i], neighbors[j], progress and bar is None)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out
