"""The Ray executor: each zoo unit one Ray task with declared resources, pair statistics in chunks.

A unit's task asks for one CPU, one GPU when it extracts on CUDA (an explicit ``cuda``
device, or the automatic device on a cluster that has GPUs) and the memory
:func:`estimate_memory` gives from n and the model's layer count and hidden size when they
are known.  Tasks read and write the shared :class:`~layerknn.cache.Cache` themselves; the
driver holds only the texts (put once in the object store), the neighbour lists and the
results.  A unit whose worker dies is retried (``max_retries``): the cache's atomic writes
mean a worker that dies mid-write leaves no entry a later run trusts.  An interrupted driver
cancels the tasks still running, so a rerun recomputes only the units not cached yet.
Ray is optional (``pip install layerknn[ray]``); without it :class:`RayExecutor` raises
ImportError saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

# torch is imported here, when a Ray worker loads this module's task function, so that it is first
# imported on the worker's main thread: left to the unpickling of a task's arguments (which may
# hold tensors), it can be imported from two of Ray's threads at once and torch's extension then
# fails to initialise ("cannot initialize type ... already defined").
import torch  # noqa: F401

from .executors import Unit, raise_failures, run_unit
from .sources import ModelNeighbors

__all__ = ["RayExecutor", "estimate_memory", "unit_resources"]

_PIP = "pip install layerknn[ray]"
_BASE_MEMORY = 512 * 2**20  # interpreter, torch and tokenizer overhead of one worker

# ------------------------------------------------------------------------------------------
# resources of a unit


def _model_size(model: Any) -> tuple[int | None, int | None, int | None]:
    """(layers, hidden size, bytes of weight files) of a model named by alias or local folder, where known."""
    if not isinstance(model, (str, os.PathLike)):
        return None, None, None
    path = Path(os.fspath(model))
    if path.is_dir():
        weights = sum(f.stat().st_size for f in path.iterdir()
                      if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        config = config.get("text_config", config) if isinstance(config, dict) else {}
        layers = config.get("num_hidden_layers", config.get("n_layer"))
        hidden = config.get("hidden_size", config.get("n_embd"))
        return (int(layers) if layers else None), (int(hidden) if hidden else None), weights or None
    if path.is_file():
        return None, None, path.stat().st_size
    from .models import list_aliases

    row = next((r for r in list_aliases() if r["alias"] == os.fspath(model)), None)
    if row is None:
        return None, None, None
    layers, hidden = row.get("num_layers"), row.get("hidden_size")
    return (int(layers) if layers else None), (int(hidden) if hidden else None), None


def estimate_memory(unit: Unit, n: int) -> int | None:
    """Bytes one unit needs at its peak (None when the model's size is unknown, e.g. a hub name).

    Counts the pooled activations (L + 1) × n × d float32 twice (buffer and its copy), the
    neighbour lists (L + 1) × n × k_max (int32 indices + float32 scores), the weights
    (float32 after loading: up to 4× a quantised file) and a fixed interpreter overhead.

    Examples
    --------
    >>> import numpy as np
    >>> from layerknn.options import ExtractOptions, LoadOptions
    >>> acts = np.zeros((3, 100, 8), np.float32)
    >>> estimate_memory(Unit(0, "A", acts, 5, LoadOptions(), ExtractOptions(), None), 100) > 2 * acts.nbytes
    True
    """
    model = unit.model
    if isinstance(model, ModelNeighbors) or hasattr(model, "indices"):
        return _BASE_MEMORY
    values = getattr(model, "values", model)
    if getattr(values, "ndim", None) == 3 and hasattr(values, "shape"):
        rows, _, width = (int(s) for s in values.shape)
        return _BASE_MEMORY + 2 * rows * n * width * 4 + rows * n * unit.k_max * 8
    layers, hidden, weights = _model_size(model)
    if layers is None or hidden is None:
        return None if weights is None else _BASE_MEMORY + 4 * weights
    neighbours = (layers + 1) * n * unit.k_max * 8
    activations = 2 * (layers + 1) * n * hidden * 4
    return _BASE_MEMORY + activations + neighbours + 4 * (weights or 0)


def _uses_gpu(unit: Unit, cluster_gpus: float) -> bool:
    device = unit.load.device
    if device is not None:
        return str(device).startswith("cuda")
    extracts = isinstance(unit.model, (str, os.PathLike, tuple)) or hasattr(unit.model, "forward")
    return extracts and cluster_gpus > 0  # automatic device: a GPU when the cluster has one


def unit_resources(unit: Unit, n: int, *, cluster_gpus: float = 0.0, node_memory: float | None = None) -> dict:
    """Ray resources of one unit: ``num_cpus=1``, ``num_gpus=1`` on CUDA, ``memory`` when known.

    The memory request is capped at the largest node's memory, so no task is left unschedulable.

    Examples
    --------
    >>> from layerknn.options import ExtractOptions, LoadOptions
    >>> unit = Unit(0, "A", "some/hub-model", 5, LoadOptions(device="cuda"), ExtractOptions(), None)
    >>> unit_resources(unit, 100)
    {'num_cpus': 1, 'num_gpus': 1}
    """
    resources: dict[str, Any] = {"num_cpus": 1}
    if _uses_gpu(unit, cluster_gpus):
        resources["num_gpus"] = 1
    memory = estimate_memory(unit, n)
    if memory is not None:
        resources["memory"] = int(min(memory, node_memory) if node_memory else memory)
    return resources


# ------------------------------------------------------------------------------------------
# Ray


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"executor='ray' needs Ray, which is not installed; run: {_PIP}") from exc
    return ray


def _ray_unit(function: Callable, unit: Unit, texts: Sequence[str] | None) -> tuple[ModelNeighbors, dict]:
    """Body of a unit's Ray task: the cache root is this worker's too (dequantised models included).

    Ray shows a GPU task only the GPU it was given, so ``cuda:N`` becomes that one, ``cuda``.
    """
    import ray

    if unit.cache is not None:
        os.environ["LAYERKNN_CACHE_DIR"] = str(unit.cache.path)
    if str(unit.load.device).startswith("cuda:"):
        unit = dataclasses.replace(unit, load=dataclasses.replace(unit.load, device="cuda"))
    side, record = function(unit, texts)
    record["node"] = ray.get_runtime_context().get_node_id()
    return side, record


def _ray_pairs(job: Callable, chunk: list, blocks: list, refs: dict) -> list:
    """Body of a pair-chunk task: fetch the neighbour lists it needs once, then each pair's statistics."""
    import ray

    neighbors = dict(zip(refs, ray.get(list(refs.values()))))
    return [job(i, j, block, neighbors[i], neighbors[j], False) for (i, j), block in zip(chunk, blocks)]


class RayExecutor:
    """Run units and pair statistics as Ray tasks.

    Parameters
    ----------
    address : str, optional
        Passed to ``ray.init`` when Ray is not initialised yet: None starts (or finds via
        ``RAY_ADDRESS``) a cluster, ``"auto"`` joins the running one, ``"ray://host:10001"``
        connects through Ray Client.  An initialised Ray is used as it is.
    max_retries : int
        Retries of a unit whose worker process dies (errors raised by the unit are not retried).
    unit_function : callable, optional
        The function each unit task runs (default :func:`run_unit`); for instrumentation.
    init_kwargs : dict, optional
        Further ``ray.init`` arguments.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = 3, unit_function: Callable | None = None,
                 init_kwargs: dict | None = None):
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string such as 'auto' or 'ray://host:10001', got "
                            f"{type(address).__name__}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.address, self.max_retries = address, max_retries
        self.unit_function = unit_function or run_unit
        self.init_kwargs = dict(init_kwargs or {})
        self._ray = _import_ray()

    def __repr__(self) -> str:
        return f"RayExecutor({self.address!r})"

    def _connect(self):
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address, **{"log_to_driver": False, **self.init_kwargs})
        return ray

    def map_units(self, units: Sequence[Unit], texts: Sequence[Sequence[str] | None], *, progress: bool,
                  on_done: Callable[[dict], None]) -> list[tuple[ModelNeighbors, dict]]:
        """As :meth:`LocalExecutor.map_units`, one task per unit, all submitted at once (every dataset's too);
        results arrive in completion order."""
        ray = self._connect()
        from ray.exceptions import RayError, RayTaskError

        sizes = [len(t) if t is not None else _n_of([u for u in units if u.dataset == d]) for d, t in enumerate(texts)]
        resources = ray.cluster_resources()
        node_memory = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")),
                          default=None)
        task = ray.remote(_ray_unit)
        texts_refs = [ray.put(list(t)) if t is not None else None for t in texts]  # each dataset enters once
        refs = {}
        for position, unit in enumerate(units):
            options = unit_resources(unit, sizes[unit.dataset], cluster_gpus=resources.get("GPU", 0.0),
                                     node_memory=node_memory)
            where = f" on {unit.dataset_name}" if unit.dataset_name is not None else ""
            refs[task.options(max_retries=self.max_retries, retry_exceptions=False,
                              name=f"layerknn unit {unit.index}: {unit.label}{where}", **options)
                 .remote(self.unit_function, unit, texts_refs[unit.dataset])] = (position, unit)
        results: list[Any] = [None] * len(units)
        failures = []
        bar = _bar(progress, len(units), "models", "model")
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    position, unit = refs[ref]
                    try:
                        results[position] = ray.get(ref)
                    except RayTaskError as exc:  # the unit raised: keep the original exception
                        failures.append((unit, exc.cause if isinstance(exc.cause, Exception) else exc))
                        continue
                    except RayError as exc:  # worker or node lost beyond max_retries
                        failures.append((unit, RuntimeError(f"{type(exc).__name__}: {exc}")))
                        continue
                    if bar is not None:
                        bar.update(1)
                    on_done(results[position][1])
        except BaseException:
            _cancel(ray, pending)  # an interrupted driver stops its cluster work; finished units stay cached
            raise
        finally:
            if bar is not None:
                bar.close()
        raise_failures(failures, len(units))
        return results

    def map_pairs(self, job: Callable, keys: Sequence[tuple[int, int]], blocks: dict, neighbors: Sequence,
                  *, progress: bool) -> dict:
        """As :meth:`LocalExecutor.map_pairs`, over chunks of pairs; each model's lists enter the store once."""
        if not keys:
            return {}
        ray = self._connect()
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, -(-len(keys) // (2 * workers)))
        chunks = [list(keys[i:i + size]) for i in range(0, len(keys), size)]
        stored = {m: ray.put(neighbors[m]) for m in sorted({m for key in keys for m in key})}
        task = ray.remote(_ray_pairs).options(num_cpus=1, max_retries=self.max_retries)
        refs = {task.remote(job, chunk, [blocks[key] for key in chunk], {m: stored[m] for m in sorted(set(sum(
            chunk, ())))}): chunk for chunk in chunks}
        bar = _bar(progress, len(keys), "pair statistics", "pair")
        out = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    out.update(zip(refs[ref], ray.get(ref)))
                    if bar is not None:
                        bar.update(len(refs[ref]))
        except BaseException:
            _cancel(ray, pending)
            raise
        finally:
            if bar is not None:
                bar.close()
        return {key: out[key] for key in keys}


def _cancel(ray, pending: list, timeout: float = 60.0) -> None:
    """Cancel unfinished tasks and wait (bounded) until they have stopped, so nothing writes afterwards."""
    for ref in pending:
        ray.cancel(ref)
    if pending:
        ray.wait(pending, num_returns=len(pending), timeout=timeout)


def _n_of(units: Sequence[Unit]) -> int:
    from .sources import prompt_count

    return next((c for u in units if (c := prompt_count(u.model, u.label)) is not None), 0)


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
