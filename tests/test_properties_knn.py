"""Property-based tests (hypothesis) of ``layerknn.knn`` and ``layerknn.overlap``.

Each example draws small shapes, an input dtype (float16, torch bfloat16, float32, float64), a
metric, k over its whole range, the self-join (with or without self) or the ``y=`` form, data
with exact ties and duplicate rows, and a power-of-two scale across float32's exponent range,
and checks the result against a float64 NumPy oracle: the neighbours of tests/reference.py
with its tolerance taken relative to the scores' scale (inputs divided by a power of two, which
scales scores exactly), or the one documented error (a zero-norm row under cosine; scores
beyond float32). ``overlap`` is checked against Python sets, ids dense or huge and repeated.
The budget is fixed by tests/_hypothesis_profile.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _hypothesis_profile import PROFILE
from hypothesis import assume, given, note
from hypothesis import strategies as st

import layerknn
from conftest import to_numpy
from reference import assert_neighbors_exact, reference_knn

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Scale exponents per input dtype: float16 tops out at 65504; below 2^-60 scores leave
# float32's normal range and come back rounded (see layerknn._scaling).
EXPONENTS = {"float16": (-8, 8), "bfloat16": (-60, 127), "float32": (-60, 127), "float64": (-60, 127)}
LARGEST = {"float16": 65000.0, "bfloat16": 3.38e38, "float32": FLOAT32_MAX, "float64": FLOAT32_MAX}


def values(rng: np.random.Generator, mode: str, shape: tuple[int, ...]) -> np.ndarray:
    """float64 data: Gaussian, small integers (exact ties, zero rows), or duplicated rows."""
    if mode == "ints":
        return rng.integers(-2, 3, shape).astype(np.float64)
    out = rng.standard_normal(shape)
    if mode == "dups":
        rows = shape[-2]
        out = out[..., rng.integers(0, max(1, rows // 2), rows), :]
    return out


def as_input(v: np.ndarray, dtype: str):
    """The caller's array in ``dtype`` plus the float32 values the engine will see."""
    v = np.clip(v, -LARGEST[dtype], LARGEST[dtype])
    if dtype == "bfloat16":
        arr = torch.from_numpy(v).to(torch.bfloat16)
        return arr, arr.float().numpy()
    arr = v.astype(dtype)
    return arr, arr.astype(np.float32)


@st.composite
def knn_cases(draw):
    metric = draw(st.sampled_from(["cosine", "ip", "l2"]))
    dtype = draw(st.sampled_from(list(EXPONENTS)))
    L, n, d = draw(st.integers(1, 3)), draw(st.integers(2, 40)), draw(st.integers(1, 24))
    cross = draw(st.booleans())
    m = draw(st.integers(1, 40)) if cross else n
    exclude_self = not cross and draw(st.booleans())
    k = draw(st.integers(1, n - 1 if exclude_self else m))
    lo, hi = EXPONENTS[dtype]
    exps = (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)) if cross else None)
    modes = (draw(st.sampled_from(["gauss", "ints", "dups"])), draw(st.sampled_from(["gauss", "ints", "dups"])))
    seed = draw(st.integers(0, 2**32 - 1))
    return metric, dtype, (L, n, m, d), k, exclude_self, cross, exps, modes, seed


def power_of_two_near(v: np.ndarray) -> float:
    top = float(np.abs(v).max())
    return 1.0 if top == 0 else float(2.0 ** np.frexp(top)[1])


@PROFILE
@given(knn_cases())
def test_knn_matches_float64_oracle(case):
    metric, dtype, (L, n, m, d), k, exclude_self, cross, exps, modes, seed = case
    rng = np.random.default_rng(seed)
    x, x32 = as_input(np.ldexp(values(rng, modes[0], (L, n, d)), exps[0]), dtype)
    y, y32 = (None, None)
    if cross:
        y, y32 = as_input(np.ldexp(values(rng, modes[1], (L, m, d)), exps[1]), dtype)
    x64 = x32.astype(np.float64)
    y64 = None if y32 is None else y32.astype(np.float64)
    call = dict(k=k, metric=metric, exclude_self=exclude_self, y=y)

    if metric == "cosine":
        sq = np.concatenate([(v**2).sum(-1).ravel() for v in (x64, y64) if v is not None])
        assume(not ((sq > 1e-31) & (sq < 1e-29)).any())  # at the engine's 1e-30 cut-off
        if (sq < 1e-30).any():
            with pytest.raises(ValueError, match="zero"):
                layerknn.knn(x, **call)
            return
        nbrs = layerknn.knn(x, **call)
        assert_neighbors_exact(to_numpy(nbrs.indices), to_numpy(nbrs.scores), x64, k, metric, exclude_self, y64)
        return

    _, ref_scores = reference_knn(x64, k, metric, exclude_self, y64)
    top = float(np.abs(ref_scores).max())
    if metric == "l2":  # |x|^2 + |y|^2 - 2xy cancels badly at huge scales: take the true distances
        base = x64 if y64 is None else y64
        true = ((x64[..., :, None, :] - base[..., None, :, :]) ** 2).sum(-1)
        if y64 is None and exclude_self:
            true[..., np.arange(n), np.arange(n)] = np.inf
        top = float(np.sort(true, axis=-1)[..., :k].max())
    note(f"largest reference score {top:.3g}")
    assume(not 0.98 * FLOAT32_MAX < top < 1.02 * FLOAT32_MAX)
    if top > FLOAT32_MAX:
        with pytest.raises(ValueError, match="too large for .* scores in float32"):
            layerknn.knn(x, **call)
        return
    nbrs = layerknn.knn(x, **call)
    indices, scores = to_numpy(nbrs.indices), to_numpy(nbrs.scores)
    assert np.isfinite(scores).all()
    # Tolerance relative to the scores' scale: compare x / cx against y / cy (powers of two).
    cx = power_of_two_near(x64)
    cy = cx if y64 is None else power_of_two_near(y64)
    if metric == "l2":
        cx = cy = max(cx, cy)
    unit_scores = (scores.astype(np.float64) / (cx * cy)).astype(np.float32)
    assert_neighbors_exact(indices, unit_scores, x64 / cx, k, metric, exclude_self, None if y64 is None else y64 / cy)


@st.composite
def overlap_cases(draw):
    La, Lb, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 16))
    ka, kb = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    k = draw(st.none() | st.integers(1, min(ka, kb)))
    ids = draw(st.sampled_from([2, n, 3 * n + 5, 100_000, 2**31 - 1]))
    kind = draw(st.sampled_from(["int32", "int64", "torch"]))
    flat = (draw(st.booleans()) and La == 1, draw(st.booleans()) and Lb == 1)
    return (La, Lb, n, ka, kb), k, ids, kind, flat, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@PROFILE
@given(overlap_cases())
def test_overlap_matches_set_oracle(case):
    (La, Lb, n, ka, kb), k, ids, kind, flat, per_prompt, seed = case
    rng = np.random.default_rng(seed)
    a = rng.integers(0, ids, (La, n, ka), dtype=np.int64)
    b = rng.integers(0, ids, (Lb, n, kb), dtype=np.int64)
    kk = min(ka, kb) if k is None else k
    counts = np.array([[[len(set(a[la, i, :kk].tolist()) & set(b[lb, i, :kk].tolist())) for i in range(n)]
                        for lb in range(Lb)] for la in range(La)])
    mean = counts.sum(-1) / (kk * n)

    def wrap(v, single):
        v = v[0] if single else v
        return torch.from_numpy(v) if kind == "torch" else v.astype(kind)

    out = layerknn.overlap(wrap(a, flat[0]), wrap(b, flat[1]), k, per_prompt=per_prompt)
    got_mean, got_counts = out if per_prompt else (out, None)
    index = (0 if flat[0] else slice(None), 0 if flat[1] else slice(None))
    host = (lambda v: v.numpy()) if kind == "torch" else np.asarray  # 2-D pairs give 0-d results
    np.testing.assert_allclose(host(got_mean), mean[index], rtol=1e-14, atol=0)
    if per_prompt:
        assert host(got_counts).dtype == np.uint16
        np.testing.assert_array_equal(host(got_counts), counts[index])
