"""The CPU k-NN engine itself (``layerknn._core.knn_cpu``) against a NumPy float64 reference.

Targets the engine's internals through its inputs: sizes straddling the tile (192 rows), panel
(48/24/8 rows) and feature-chunk (256) boundaries, n=2, k=1, k=n-1 (the exact-scan mode), d=1,
duplicate rows, exact ties, all metrics, the cross form. It also checks that every kernel table
(LAYERKNN_CPU_SIMD = scalar/avx2/avx512) and tile precision (LAYERKNN_CPU_KERNEL =
fp32/bf16/int8) and every thread count return bit-identical results, as the engine's exact
re-scoring promises. On CPUs with AMX every test runs twice, with the matrix unit's tiles
(LAYERKNN_CPU_AMX=auto) and with the AVX-512 ones (off).
"""

from __future__ import annotations


import numpy as np
import pytest

from layerknn import _core
from reference import assert_neighbors_exact, reference_knn

METRIC_CODES = {"ip": 0, "cosine": 1, "l2": 2}
LOW_PRECISIONS = [p for p in _core.tile_precisions() if p != "fp32"]
HAS_AMX = _core.simd_level() == "avx512-amx"


@pytest.fixture(autouse=True, params=["auto", "off"] if HAS_AMX else ["auto"], ids=lambda v: f"amx-{v}")
def amx_mode(request, monkeypatch):
    """Every test with and without AMX tiles where the CPU has them (simd_amx.cpp)."""
    monkeypatch.setenv("LAYERKNN_CPU_AMX", request.param)
    return request.param


def engine(x, k, metric="cosine", exclude_self=True, y=None, threads=2):
    return _core.knn_cpu(x, y, k, METRIC_CODES[metric], exclude_self, threads)


def clustered(rng, L, n, d, rank=4):
    """Gaussian rows plus a shared low-rank part, so neighbourhoods are not all alike."""
    base = rng.standard_normal((L, rank, d)).astype(np.float32)
    mix = rng.standard_normal((L, n, rank)).astype(np.float32)
    return (mix @ base + 0.7 * rng.standard_normal((L, n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize(
    "L,n,d,k",
    [
        (1, 2, 1, 1),
        (2, 9, 3, 8),
        (1, 191, 257, 10),
        (2, 193, 256, 5),
        (1, 385, 49, 17),
        (1, 200, 513, 1),
    ],
)
def test_self_join_matches_float64(rng, metric, L, n, d, k):
    x = clustered(rng, L, n, d)
    indices, scores = engine(x, k, metric)
    assert_neighbors_exact(indices, scores, x, k, metric)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("n,m,d,k", [(1, 5, 4, 5), (50, 193, 33, 7), (200, 97, 300, 12)])
def test_cross_form_matches_float64(rng, metric, n, m, d, k):
    x = clustered(rng, 2, n, d)
    y = clustered(rng, 2, m, d)
    indices, scores = engine(x, k, metric, exclude_self=False, y=y)
    assert_neighbors_exact(indices, scores, x, k, metric, exclude_self=False, y=y)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_include_self(rng, metric):
    x = clustered(rng, 1, 250, 20)
    indices, scores = engine(x, 4, metric, exclude_self=False)
    assert_neighbors_exact(indices, scores, x, 4, metric, exclude_self=False)
    assert (indices[0, :, 0] == np.arange(250)).all()


def test_k_equal_n_minus_one_uses_exact_scan_and_is_exact(rng):
    # k this large exceeds the candidate-list memory budget: every row is scanned exactly.
    x = clustered(rng, 1, 1100, 8)
    indices, scores = engine(x, 1099, "cosine")
    ref_idx, ref_scores = reference_knn(x, 1099, "cosine")
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (np.sort(indices, axis=-1) == np.sort(ref_idx, axis=-1)).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_integer_ties_equal_reference_exactly(rng, metric):
    # Small integer vectors: fp32 and float64 scores are equal and exact, ties are everywhere.
    x = rng.integers(-2, 3, size=(2, 400, 6)).astype(np.float32)
    indices, scores = engine(x, 9, metric)
    ref_idx, ref_scores = reference_knn(x, 9, metric)
    assert (indices == ref_idx).all()
    assert (scores == ref_scores).all()


def test_duplicates_are_neighbours_and_tie_by_index(rng):
    x = clustered(rng, 1, 300, 40)
    x[0, 250:] = x[0, 10]  # rows 10 and 250..299 are identical
    indices, scores = engine(x, 5, "cosine")
    assert indices[0, 10].tolist() == [250, 251, 252, 253, 254]
    assert indices[0, 250].tolist() == [10, 251, 252, 253, 254]
    assert (scores[0, 10] == scores[0, 10, 0]).all()


def test_all_rows_identical_falls_back_and_stays_exact():
    # Every key ties, so candidate lists overflow; the exact fallback must still be right.
    x = np.ones((2, 300, 16), dtype=np.float32)
    indices, _ = engine(x, 6, "cosine")
    expected = np.array([[j for j in range(8) if j != i][:6] for i in range(300)])
    assert (indices == expected).all()


def test_threads_do_not_change_results(rng):
    x = clustered(rng, 3, 420, 70)
    one = engine(x, 10, "cosine", threads=1)
    for threads in (2, 3, 8):
        other = engine(x, 10, "cosine", threads=threads)
        assert (one[0] == other[0]).all() and (one[1] == other[1]).all()


def use_level(monkeypatch, level):
    """Force the kernel table `level`, asserting the engine really runs it (or skip, saying why)."""
    monkeypatch.setenv("LAYERKNN_CPU_SIMD", level)
    table = _core.active_kernel_table()
    if table != level:
        pytest.skip(f"this CPU cannot run the {level} table (its level is {_core.simd_level()})")
    assert table == level


def test_scalar_table_can_always_be_forced(monkeypatch):
    monkeypatch.setenv("LAYERKNN_CPU_SIMD", "scalar")
    assert _core.active_kernel_table() == "scalar"
    monkeypatch.setenv("LAYERKNN_CPU_SIMD", "auto")
    assert _core.simd_level().startswith(_core.active_kernel_table())


@pytest.mark.parametrize("level", ["avx2", "avx512"])
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_every_kernel_table_gives_identical_bits(rng, monkeypatch, metric, level):
    # Each SIMD table, at every tile precision it offers, against the scalar table's bits.
    x = clustered(rng, 2, 230, 37)
    y = clustered(rng, 2, 97, 37)
    use_level(monkeypatch, "scalar")
    monkeypatch.setenv("LAYERKNN_CPU_KERNEL", "fp32")
    scalar = engine(x, 7, metric) + engine(x, 5, metric, False, y)
    assert_neighbors_exact(scalar[0], scalar[1], x, 7, metric)
    use_level(monkeypatch, level)
    for kernel in ["fp32", *LOW_PRECISIONS, "auto"]:
        monkeypatch.setenv("LAYERKNN_CPU_KERNEL", kernel)
        other = engine(x, 7, metric) + engine(x, 5, metric, False, y)
        for a, b in zip(scalar, other):
            assert (a == b).all()


def forced(monkeypatch, precision, *args, **kwargs):
    monkeypatch.setenv("LAYERKNN_CPU_KERNEL", precision)
    return engine(*args, **kwargs)


@pytest.mark.skipif(not LOW_PRECISIONS, reason="CPU offers no low-precision tiles")
@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_low_precision_tiles_stay_exact_on_near_ties(rng, monkeypatch, precision, metric):
    # Many candidates closer together than bf16/int8 can tell apart: re-scoring must sort them out.
    centre = rng.standard_normal(300).astype(np.float32)
    x = (centre + 1e-3 * rng.standard_normal((1, 400, 300))).astype(np.float32)
    low = forced(monkeypatch, precision, x, 10, metric)
    fp32 = forced(monkeypatch, "fp32", x, 10, metric)
    assert (low[0] == fp32[0]).all() and (low[1] == fp32[1]).all()
    assert_neighbors_exact(low[0], low[1], x, 10, metric, tol=1e-6)


@pytest.mark.skipif(not LOW_PRECISIONS, reason="CPU offers no low-precision tiles")
@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("L,n,d,k", [(2, 9, 3, 8), (1, 193, 257, 5), (1, 385, 65, 17), (2, 260, 130, 1)])
def test_low_precision_tiles_match_float64_at_awkward_sizes(rng, monkeypatch, precision, L, n, d, k):
    # Feature counts off the bf16 pair / int8 quad / 64-feature packing steps, rows off the
    # 8-row, 48-column and 192-row tiling, both tails of the candidate window.
    x = clustered(rng, L, n, d)
    for metric in ("cosine", "ip", "l2"):
        indices, scores = forced(monkeypatch, precision, x, k, metric)
        assert_neighbors_exact(indices, scores, x, k, metric)
        fp32 = forced(monkeypatch, "fp32", x, k, metric)
        assert (indices == fp32[0]).all() and (scores == fp32[1]).all()


@pytest.mark.skipif("int8" not in LOW_PRECISIONS, reason="CPU lacks int8 tiles")
def test_int8_tiles_stay_exact_with_an_outlying_feature(rng, monkeypatch):
    # One huge feature per row makes every int8 step coarse: the window swallows most rows, so
    # lists overflow into exact scans; answers must not change. Auto mode must see the cost
    # and may pick any precision, with the same answer.
    x = clustered(rng, 2, 300, 64)
    x[..., 7] = 60.0 + rng.standard_normal((2, 300)).astype(np.float32)
    int8 = forced(monkeypatch, "int8", x, 10)
    fp32 = forced(monkeypatch, "fp32", x, 10)
    auto = forced(monkeypatch, "auto", x, 10)
    assert (int8[0] == fp32[0]).all() and (int8[1] == fp32[1]).all()
    assert (auto[0] == fp32[0]).all() and (auto[1] == fp32[1]).all()
    assert_neighbors_exact(int8[0], int8[1], x, 10, "cosine")


@pytest.mark.skipif("int8" not in LOW_PRECISIONS, reason="CPU lacks int8 tiles")
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_int8_tiles_survive_full_scale_codes(rng, monkeypatch, metric):
    # Rows of +-1 (and +-1 with one planted near-copy each) quantise to codes of magnitude 127
    # everywhere, the largest code products: every pair of features sums to +-2 * 127^2, the
    # edge of VPMADDUBSW's int16 saturation on AVX2 (simd_avx2_int8.cpp). A saturating pair
    # would shift tile scores far outside the window and lose neighbours.
    x = np.where(rng.random((1, 300, 96)) < 0.5, -1.0, 1.0).astype(np.float32)
    x[0, 150:] = x[0, :150]
    flips = rng.integers(0, 96, size=150)
    x[0, np.arange(150, 300), flips] *= -1
    int8 = forced(monkeypatch, "int8", x, 6, metric)
    fp32 = forced(monkeypatch, "fp32", x, 6, metric)
    assert (int8[0] == fp32[0]).all() and (int8[1] == fp32[1]).all()
    assert_neighbors_exact(int8[0], int8[1], x, 6, metric)
    assert (int8[0][0, :150, 0] == np.arange(150, 300)).all()  # the planted copies come first


def activation_like(rng, L, n, d):
    """Rows like pooled LLM activations: a large shared mean, low rank, a few massive features
    (hundreds of times the rest, as in real models), exact duplicates and integer-valued ties."""
    mean = 2 * rng.standard_normal((L, 1, d))
    x = mean + clustered(rng, L, n, d, rank=3) * 0.3
    hot = rng.choice(d, size=3, replace=False)
    x[..., hot] *= np.array([300.0, -120.0, 60.0])
    x[:, 5] = x[:, 4]  # duplicates
    x[:, 9] = x[:, 4]
    x[:, 20:30] = np.round(x[:, 20:30])  # integer rows: exact score ties are likely
    x[:, 31] = x[:, 21]
    return np.ascontiguousarray(x, dtype=np.float32)


def split_mode(monkeypatch, split, precision, *args, **kwargs):
    monkeypatch.setenv("LAYERKNN_CPU_SPLIT", split)
    return forced(monkeypatch, precision, *args, **kwargs)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("L,n,d,k", [(2, 257, 200, 10), (1, 200, 64, 1), (1, 60, 33, 59), (1, 385, 17, 5)])
def test_split_tiles_are_bit_identical_on_activation_like_layers(rng, monkeypatch, metric, L, n, d, k):
    # Centred, outlier-split fp32, int8 and bf16 tiles (tile_split.h) against plain ones and the
    # automatic choice: identical bits, and exact against float64 (ties by lower index).
    x = activation_like(rng, L, n, d)
    fp32 = split_mode(monkeypatch, "auto", "fp32", x, k, metric)
    assert_neighbors_exact(fp32[0], fp32[1], x, k, metric)
    variants = [("auto", "auto"), ("off", "fp32")] + [(s, p) for p in LOW_PRECISIONS for s in ("auto", "off")]
    for split, precision in variants:
        got = split_mode(monkeypatch, split, precision, x, k, metric)
        assert (got[0] == fp32[0]).all() and (got[1] == fp32[1]).all(), (split, precision)


@pytest.mark.skipif(not LOW_PRECISIONS, reason="CPU offers no low-precision tiles")
@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_split_tiles_in_the_cross_form(rng, monkeypatch, metric, precision):
    x = activation_like(rng, 2, 150, 96)
    y = activation_like(rng, 2, 230, 96)
    got = split_mode(monkeypatch, "auto", precision, x, 7, metric, exclude_self=False, y=y)
    want = split_mode(monkeypatch, "auto", "fp32", x, 7, metric, exclude_self=False, y=y)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
    assert_neighbors_exact(got[0], got[1], x, 7, metric, exclude_self=False, y=y)


@pytest.mark.skipif(not LOW_PRECISIONS, reason="CPU offers no low-precision tiles")
@pytest.mark.parametrize("precision", LOW_PRECISIONS)
def test_split_shrinks_the_candidate_windows(rng, monkeypatch, precision):
    # What the split is for: on activation-like rows the plain int8 or bf16 window holds many
    # rows, the centred, split one few.
    x = activation_like(rng, 2, 400, 128)
    split_mode(monkeypatch, "off", precision, x, 10)
    plain = [candidates for _, candidates in _core.last_knn_report()]
    split_mode(monkeypatch, "auto", precision, x, 10)
    split = [candidates for _, candidates in _core.last_knn_report()]
    assert all(s < p / 4 for s, p in zip(split, plain)), (split, plain)


def test_last_knn_report_names_each_layers_tiles(rng, monkeypatch):
    x = clustered(rng, 3, 200, 40)
    forced(monkeypatch, "fp32", x, 5)
    report = _core.last_knn_report()
    assert [table for table, _ in report] == [_core.active_kernel_table()] * 3
    assert all(5 <= candidates <= 199 for _, candidates in report)
    if "int8" in LOW_PRECISIONS:
        forced(monkeypatch, "int8", x, 5)
        assert all(table.endswith("int8") for table, _ in _core.last_knn_report())


def test_tile_precisions_always_offer_fp32():
    precisions = _core.tile_precisions()
    assert precisions[0] == "fp32" and set(precisions) <= {"fp32", "bf16", "int8"}


def test_simd_level_names_a_kernel_family():
    assert _core.simd_level() in {"avx512-amx", "avx512-bf16", "avx512", "avx2", "scalar"}


@pytest.mark.skipif(not HAS_AMX, reason="this CPU (or its kernel) offers no AMX tiles")
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_amx_tiles_run_where_the_cpu_has_them(rng, monkeypatch, amx_mode, precision):
    # The matrix unit really computes the tiles unless LAYERKNN_CPU_AMX=off, and a forced lower
    # SIMD level never reaches it.
    x = clustered(rng, 2, 300, 70)
    forced(monkeypatch, precision, x, 5)
    family = "amx" if amx_mode == "auto" else "avx512"
    assert [table for table, _ in _core.last_knn_report()] == [f"{family}-{precision}"] * 2
    monkeypatch.setenv("LAYERKNN_CPU_SIMD", "avx2")
    forced(monkeypatch, "fp32", x, 5)
    assert {table for table, _ in _core.last_knn_report()} == {"avx2"}


@pytest.mark.parametrize("precision", ["fp32", *LOW_PRECISIONS])
def test_tile_gemm_rate_times_the_table_a_call_would_use(monkeypatch, precision):
    monkeypatch.setenv("LAYERKNN_CPU_KERNEL", precision)
    x = np.random.default_rng(3).standard_normal((1, 200, 40)).astype(np.float32)
    engine(x, 3)
    table, gflops, tiles = _core._testing.tile_gemm_rate(precision, 40, 1e-3)
    assert table == _core.last_knn_report()[0][0]
    assert gflops > 0 and tiles >= 3


def test_tile_gemm_rate_rejects_a_precision_the_cpu_lacks(monkeypatch):
    monkeypatch.setenv("LAYERKNN_CPU_SIMD", "scalar")
    with pytest.raises(ValueError, match="'int8' is not among"):
        _core._testing.tile_gemm_rate("int8", 40)
    with pytest.raises(ValueError, match="seconds > 0"):
        _core._testing.tile_gemm_rate("fp32", 40, 0.0)


@pytest.mark.parametrize(
    "var", ["LAYERKNN_CPU_SIMD", "LAYERKNN_CPU_KERNEL", "LAYERKNN_CPU_SPLIT", "LAYERKNN_CPU_AMX"]
)
def test_bad_kernel_override_is_a_clear_error(monkeypatch, var):
    monkeypatch.setenv(var, "sse9")
    with pytest.raises(ValueError, match=var):
        engine(np.ones((1, 4, 2), dtype=np.float32), 1)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_engine_rejects_nan_rows_itself(rng, metric):
    # The CPU engine validates rows in its statistics pass (the Python layer adds no extra pass).
    x = clustered(rng, 3, 250, 20)
    x[2, 117, 5] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or Inf: layer 2, row 117"):
        engine(x, 5, metric)
    y = clustered(rng, 3, 40, 20)
    y[1, 3, 0] = np.inf
    with pytest.raises(ValueError, match=r"y contains NaN or Inf: layer 1, row 3"):
        engine(clustered(rng, 3, 30, 20), 5, metric, False, y)


def test_engine_rejects_zero_rows_only_under_cosine(rng):
    x = clustered(rng, 2, 300, 16)
    x[1, 42] = 0.0
    with pytest.raises(ValueError, match=r"zero or near-zero-norm row .* layer 1, row 42"):
        engine(x, 4, "cosine")
    for metric in ("ip", "l2"):
        indices, scores = engine(x, 4, metric)
        assert_neighbors_exact(indices, scores, x, 4, metric)
