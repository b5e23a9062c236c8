"""``layerknn.compare``: two models layer by layer, the two-model case of :func:`layerknn.zoo`.

There is one path from models to results: ``compare(a, b, ...)`` runs ``zoo([a, b], ...)``
and returns its single pair, so both take the same options with the same defaults
(:mod:`layerknn.options`) and give bit-identical numbers.
"""

from __future__ import annotations

from typing import Any, Sequence

from .comparison import Comparison
from .zoo import zoo

__all__ = ["compare"]


def compare(model_a: Any, model_b: Any, texts: Any = None, *, names: Sequence[str] | None = None,
            **options: Any) -> Comparison:
    """Compare every layer of ``model_a`` with every layer of ``model_b`` on the same prompts.

    Parameters
    ----------
    model_a, model_b
        Each one of: a model name, alias (``layerknn.list_aliases()``) or local path; a
        loaded ``(model, tokenizer)`` pair or a model object; an ``Activations``; an array
        of shape (L + 1, n, d); or ``layerknn.Neighbors`` with at least k + 1 columns.
    texts : list of str or str, optional
        The prompts, or a dataset spec such as ``"builtin:stdlib-docs?n=1024"``.
    names : (str, str), optional
        Display names (default: the model names, or "A"/"B" for arrays).
    **options
        Every option of :func:`layerknn.zoo`, with the same defaults: ``k=10``,
        ``pooling="last"``, ``cache=True``, ``bootstrap=1000``, ``permutations=200``,
        ``seed=0``, ``progress=False``, ``device``, ``dtype="float32"``, ``max_length=None``,
        ``batch_size="auto"``, ``chat_template=False``, ``trust_remote_code=False``,
        ``executor="local"`` (``"ray"`` or a Ray address: the two models run as Ray tasks).

    Returns
    -------
    Comparison
        With bootstrap intervals (``ci``), permutation p-values and, in ``meta``, each
        model's provenance, the options used and the time of each phase.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> acts = np.random.default_rng(0).standard_normal((4, 60, 16)).astype(np.float32)
    >>> c = layerknn.compare(acts, acts, k=5, bootstrap=50, permutations=0)
    >>> c.matrix.diagonal().tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> c.per_prompt.shape
    (4, 4, 60)
    """
    return zoo([model_a, model_b], texts, names=names, **options).comparison(0, 1)
