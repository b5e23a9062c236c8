"""``layerknn.sweep_k``: does a finding hold across k?  Every k from one extraction and one search.

The neighbour lists are searched once at max(ks) + 1; the k nearest of a prompt are the
first k of them (the engine's order is exact, ties to the lower index), so each k's
comparison equals a separate ``compare(..., k=k)`` bit for bit, statistics included.
"""

from __future__ import annotations

from typing import Any, Sequence

from .comparison import Comparison
from .options import DEFAULTS, ExtractOptions, LoadOptions

__all__ = ["sweep_k", "SWEEP_KS"]

#: The default k values of a sweep (the paper shows k = 1 and k = 10).
SWEEP_KS = (1, 2, 5, 10, 20, 50)


def sweep_k(model_a: Any, model_b: Any, texts: Any = None, *, ks: Sequence[int] = SWEEP_KS,
            measure: str = DEFAULTS.measure, names: Sequence[str] | None = None, cache: Any = DEFAULTS.cache,
            bootstrap: int = DEFAULTS.bootstrap,
            permutations: int = DEFAULTS.permutations, seed: int = DEFAULTS.seed, progress: bool = False,
            device: Any = None, dtype: Any = DEFAULTS.dtype, pooling: str = DEFAULTS.pooling,
            max_length: int | None = DEFAULTS.max_length, batch_size: Any = DEFAULTS.batch_size,
            chat_template: bool = DEFAULTS.chat_template, trust_remote_code: bool = DEFAULTS.trust_remote_code,
            executor: Any = DEFAULTS.executor) -> dict[int, Comparison]:
    """Compare two models at several k from one extraction and one k-NN pass.

    Parameters
    ----------
    model_a, model_b, texts
        As for :func:`layerknn.compare`.
    ks : sequence of int
        The k values (each ``1 <= k <= n - 1``); duplicates are dropped, order kept sorted.
    measure, names, cache, bootstrap, permutations, seed, progress, executor
        As for :func:`layerknn.compare` (the same defaults).
    device, dtype, pooling, max_length, batch_size, chat_template, trust_remote_code
        As for :func:`layerknn.compare` (the same defaults).

    Returns
    -------
    dict
        ``{k: Comparison}``, each equal to ``compare(model_a, model_b, texts, k=k, ...)``.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> acts = np.random.default_rng(0).standard_normal((3, 40, 8)).astype(np.float32)
    >>> sweep = layerknn.sweep_k(acts, acts[::-1].copy(), ks=(1, 5), bootstrap=0, permutations=0)
    >>> sorted(sweep), sweep[5].k
    ([1, 5], 5)
    """
    from .zoo import zoo_grid

    ks = sorted(set(ks)) if not isinstance(ks, (int, str)) else ks
    if not isinstance(ks, list):
        raise TypeError(f"ks must be a sequence of integers, got {type(ks).__name__}")
    load = LoadOptions(dtype=str(dtype).replace("torch.", ""), device=device, trust_remote_code=trust_remote_code)
    extract = ExtractOptions(pooling=pooling, max_length=max_length, batch_size=batch_size,
                             chat_template=chat_template)
    (found,) = zoo_grid([model_a, model_b], [texts], ks=ks, names=names, cache=cache, bootstrap=bootstrap,
                        permutations=permutations, seed=seed, progress=progress, load=load, extract=extract,
                        measure=measure, executor=executor)
    return {k: z.comparison(0, 1) for k, z in found.items()}
