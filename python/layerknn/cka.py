"""``layerknn.cka``: linear CKA between every layer of two models, a cross-check of the k-NN overlap.

Linear centred kernel alignment compares two representations of the same n prompts through
their n × n Gram matrices K = X Xᵀ and L = Y Yᵀ:
``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.  The biased estimator uses the
double-centred Grams, ``HSIC(K, L) = <HKH, HLH>_F / (n - 1)²``; the debiased one uses the
unbiased HSIC estimator (Song et al., 2012) on Grams with a zero diagonal, which is close to
0 for unrelated representations even at small n.

Each layer's Gram is computed once (torch, on the arrays' device, float32 products) and all
layer pairs come from one matrix product of the flattened Grams, accumulated in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["cka"]


def _as_tensor(x: Any, name: str):
    import torch

    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array, got a NumPy masked array")
    from .activations import Activations

    values = x.values if isinstance(x, Activations) else x
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if tensor.ndim != 3:
        raise ValueError(f"{name} must have shape (layers, n, d), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must hold floating-point values, got {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return tensor


def _gram_terms(layers, debiased: bool):
    """Per layer: the flattened (centred or zero-diagonal) Gram, its total and its row sums, float64."""
    import torch

    x = layers.to(torch.float32)
    n = x.shape[1]
    gram = (x @ x.transpose(1, 2)).to(torch.float64)  # (c, n, n)
    if debiased:
        gram.diagonal(dim1=1, dim2=2).zero_()
    else:
        gram = gram - gram.mean(dim=1, keepdim=True)
        gram = gram - gram.mean(dim=2, keepdim=True)
    rows = gram.sum(dim=2)
    return gram.reshape(gram.shape[0], n * n), rows.sum(dim=1), rows


def _hsic(a_terms, b_terms, n: int, debiased: bool):
    flat_a, sum_a, rows_a = a_terms
    flat_b, sum_b, rows_b = b_terms
    if not debiased:
        return (flat_a @ flat_b.T) / (n - 1) ** 2
    cross = flat_a @ flat_b.T + sum_a[:, None] * sum_b[None, :] / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * (rows_a @ rows_b.T)
    return cross / (n * (n - 3))


def _self_hsic(terms, n: int, debiased: bool):
    flat, total, rows = terms
    if not debiased:
        return (flat * flat).sum(dim=1) / (n - 1) ** 2
    return ((flat * flat).sum(dim=1) + total * total / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (rows * rows).sum(dim=1)) / (n * (n - 3))


def cka(acts_a: Any, acts_b: Any, *, debiased: bool = False, max_bytes: int = 1 << 30) -> np.ndarray:
    """Linear CKA of every layer of ``acts_a`` with every layer of ``acts_b``.

    Parameters
    ----------
    acts_a, acts_b : arrays (La, n, da) and (Lb, n, db), NumPy or torch (any device), or Activations
        Pooled activations of the same n prompts (widths may differ).
    debiased : bool, default False
        Use the unbiased HSIC estimator (needs n >= 4).
    max_bytes : int
        Memory for Gram matrices held at once (layers are processed in chunks).

    Returns
    -------
    float64 array, shape (La, Lb)
        Biased CKA lies in [0, 1]; debiased CKA can be slightly negative for unrelated layers.

    Examples
    --------
    >>> import numpy as np, layerknn
    >>> x = np.random.default_rng(0).standard_normal((2, 50, 6))
    >>> q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
    >>> m = layerknn.cka(x, 3.0 * x @ q)        # rotated and scaled copies
    >>> np.allclose(np.diag(m), 1.0)
    True
    """
    import torch

    a, b = _as_tensor(acts_a, "acts_a"), _as_tensor(acts_b, "acts_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"acts_a and acts_b must hold the same prompts: n={a.shape[1]} and n={b.shape[1]}")
    n = int(a.shape[1])
    if n < (4 if debiased else 2):
        raise ValueError(f"{'debiased ' if debiased else ''}CKA needs n >= {4 if debiased else 2} prompts, got {n}")
    b = b.to(a.device)
    chunk = max(1, int(max_bytes // (2 * 8 * n * n)))  # layers whose float64 Grams fit in half the budget
    starts_b = range(0, b.shape[0], chunk)
    self_b = torch.cat([_self_hsic(_gram_terms(b[s:s + chunk], debiased), n, debiased) for s in starts_b])
    held_b = _gram_terms(b, debiased) if b.shape[0] <= chunk else None  # B's Grams kept when they fit
    out = torch.empty((a.shape[0], b.shape[0]), dtype=torch.float64, device=a.device)
    for a_start in range(0, a.shape[0], chunk):
        a_terms = _gram_terms(a[a_start:a_start + chunk], debiased)
        self_a = _self_hsic(a_terms, n, debiased)
        rows = slice(a_start, a_start + chunk)
        for b_start in starts_b:
            b_terms = held_b if held_b is not None else _gram_terms(b[b_start:b_start + chunk], debiased)
            cols = slice(b_start, b_start + chunk)
            denom = torch.sqrt(torch.clamp(self_a[:, None] * self_b[None, cols], min=0))
            out[rows, cols] = torch.where(denom > 0, _hsic(a_terms, b_terms, n, debiased)
                                          / torch.where(denom > 0, denom, 1.0), torch.nan)
    return out.cpu().numpy()
