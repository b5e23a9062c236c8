"""Many datasets in one run: ``layerknn.zoos(models, datasets)`` gives one :class:`~layerknn.Zoo` per dataset.

Every (model, dataset) pair is one unit, and all of them go to the executor in one
submission, so a Ray cluster runs them side by side; each dataset's Zoo equals
``layerknn.zoo(models, that_dataset, ...)`` bit for bit.  A unit that fails is reported with
its model and dataset named, after the other units have finished (and been cached).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .options import DEFAULTS, ExtractOptions, LoadOptions
from .zoo import Zoo, zoo_grid

__all__ = ["zoos", "dataset_names"]


def dataset_names(datasets: "Mapping[str, Any] | Sequence[Any]") -> tuple[list[str], list[Any]]:
    """(names, texts arguments) of a ``datasets`` argument: a mapping's keys, a spec's own text, else "dataset i".

    Examples
    --------
    >>> dataset_names(["builtin:random-strings?n=8", ["a", "b", "c"]])
    (['builtin:random-strings?n=8', 'dataset 1'], ['builtin:random-strings?n=8', ['a', 'b', 'c']])
    """
    if isinstance(datasets, Mapping):
        names, values = [str(name) for name in datasets], list(datasets.values())
    elif isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence):
        raise TypeError(f"datasets must be a mapping of names to texts or a list of dataset specs / prompt lists, "
                        f"got {type(datasets).__name__}")
    else:
        from .datasets import DatasetSpec, parse_spec

        values = list(datasets)
        names = [str(parse_spec(v)) if isinstance(v, (str, DatasetSpec)) else f"dataset {i}"
                 for i, v in enumerate(values)]
    if not names:
        raise ValueError("datasets must hold at least one dataset, got none")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"datasets must have distinct names, got {repeated} more than once")
    return names, values


def zoos(models: Sequence[Any], datasets: "Mapping[str, Any] | Sequence[Any]", *, k: int = DEFAULTS.k,
         measure: str = DEFAULTS.measure, pooling: str = DEFAULTS.pooling, names: Sequence[str] | None = None,
         cache: Any = DEFAULTS.cache, bootstrap: int = DEFAULTS.bootstrap, permutations: int = DEFAULTS.permutations,
         seed: int = DEFAULTS.seed, progress: "bool | Callable[[dict], Any]" = False,
         executor: Any = DEFAULTS.executor, device: Any = None, dtype: Any = DEFAULTS.dtype,
         max_length: int | None = DEFAULTS.max_length, batch_size: Any = DEFAULTS.batch_size,
         chat_template: bool = DEFAULTS.chat_template, trust_remote_code: bool = DEFAULTS.trust_remote_code
         ) -> dict[str, Zoo]:
    """Run :func:`layerknn.zoo` on several datasets at once: one Zoo per dataset, all units scheduled together.

    Parameters
    ----------
    models : sequence
        As for :func:`layerknn.zoo` (models given as arrays or neighbours are used on every dataset).
    datasets : mapping or sequence
        ``{name: texts}`` (each a list of prompts or a dataset spec), or a list of dataset specs
        (each named by its spec) and prompt lists (named ``"dataset i"``).  Names must differ.
    k, measure, pooling, names, cache, bootstrap, permutations, seed, progress, executor, device, dtype, \
max_length, batch_size, chat_template, trust_remote_code
        As for :func:`layerknn.zoo`; a ``progress`` callable's records carry a ``"dataset"`` name.

    Returns
    -------
    dict
        ``{dataset name: Zoo}`` in the order given; each equals ``layerknn.zoo(models, texts, ...)``.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> rng = np.random.default_rng(0)
    >>> texts = {"short": ["a", "b", "c", "d", "e"], "long": ["a long prompt", "another", "more", "x y", "z"]}
    >>> acts = [rng.standard_normal((3, 5, 4)).astype(np.float32) for _ in range(2)]
    >>> found = layerknn.zoos(acts, texts, k=2, bootstrap=0, permutations=0)
    >>> list(found), found["long"].dataset
    (['short', 'long'], 'custom list (5 texts)')
    """
    labels, values = dataset_names(datasets)
    load = LoadOptions(dtype=str(dtype).replace("torch.", ""), device=device, trust_remote_code=trust_remote_code)
    extract = ExtractOptions(pooling=pooling, max_length=max_length, batch_size=batch_size,
                             chat_template=chat_template)
    found = zoo_grid(models, values, ks=[k], names=names, cache=cache, bootstrap=bootstrap, permutations=permutations,
                     seed=seed, progress=progress, load=load, extract=extract, measure=measure, executor=executor,
                     dataset_names=labels)
    return {label: by_k[k] for label, by_k in zip(labels, found)}
