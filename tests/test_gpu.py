"""GPU-only tests of the CUDA engine (``@pytest.mark.gpu``; skipped without a GPU + CUDA build).

The shared device-parametrised tests (test_knn.py, test_overlap.py) already run on "cuda" when it
is available; this module adds what only the GPU needs: every k bucket and its edges, the
database-split path, unaligned / odd-width inputs (scalar loads), exact agreement with the CPU
engine on integer-valued data and, through the shared exact score, on Gaussian and
activation-like data for both candidate paths (LAYERKNN_CUDA_KERNEL=fp32 and tc), the overlap
engine against the CPU one, error paths and non-default streams, and the
launch plumbing: LAYERKNN_CUDA_SYNC=1, the plain-cudaMalloc path (LAYERKNN_CUDA_POOL=0) and a
faulting kernel reported at the layerknn call (in a subprocess: a fault ends the CUDA context).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import layerknn
from reference import assert_neighbors_exact

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")

METRICS = ["cosine", "ip", "l2"]


def _cuda(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a)).to("cuda")


def _integer_data(rng, L, n, d, dup_every=5):
    """Small integers (exact fp32 sums in any order) with duplicated rows (exact ties)."""
    x = rng.integers(-3, 4, size=(L, n, d)).astype(np.float32)
    x[:, dup_every::dup_every] = x[:, : x[:, dup_every::dup_every].shape[1]]
    x[:, :, 0] = 5.0  # no zero rows
    return x


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("L,n,d,k", [(2, 150, 37, 5), (1, 300, 64, 10), (3, 129, 128, 1),
                                     (1, 70, 9, 69)])
def test_knn_matches_float64_reference(metric, L, n, d, k):
    rng = np.random.default_rng(L * 1000 + n + d + k)
    x = rng.standard_normal((L, n, d)).astype(np.float32)
    nb = layerknn.knn(_cuda(x), k, metric=metric)
    assert nb.indices.is_cuda and nb.indices.dtype == torch.int32
    assert_neighbors_exact(nb.indices.cpu().numpy(), nb.scores.cpu().numpy(), x, k, metric)


@pytest.mark.parametrize("kernel", ["fp32", "tc"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("massive", [False, True])
def test_non_integer_data_matches_cpu_bit_for_bit(kernel, metric, massive, monkeypatch):
    if kernel == "tc" and not layerknn._core.cuda_tensor_core_built():
        pytest.skip("this build has no cuBLAS (tensor-core path)")
    monkeypatch.setenv("LAYERKNN_CUDA_KERNEL", kernel)
    rng = np.random.default_rng(7 + massive)
    x = rng.standard_normal((2, 1000, 257)).astype(np.float32)
    if massive:
        x[:, :, [3, 100, 200]] *= 100
    x[:, 7::9] = x[:, 3:-4:9][:, : x[:, 7::9].shape[1]]  # duplicates
    for k in (1, 10, 33, 256):
        gpu = layerknn.knn(_cuda(x), k, metric=metric)
        cpu = layerknn.knn(x, k, metric=metric)
        np.testing.assert_array_equal(gpu.indices.cpu().numpy(), cpu.indices)
        np.testing.assert_array_equal(gpu.scores.cpu().numpy().view(np.int32), cpu.scores.view(np.int32))


@pytest.mark.parametrize("k", [1, 31, 32, 33, 64, 65, 128, 129, 256])
def test_every_k_bucket_matches_cpu_exactly(k):
    rng = np.random.default_rng(k)
    x = _integer_data(rng, 2, 300, 24)
    for metric in ("ip", "l2"):
        gpu = layerknn.knn(_cuda(x), k, metric=metric)
        cpu = layerknn.knn(x, k, metric=metric)
        np.testing.assert_array_equal(gpu.indices.cpu().numpy(), cpu.indices)
        np.testing.assert_array_equal(gpu.scores.cpu().numpy(), cpu.scores)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_ties_and_duplicates_match_cpu_exactly(metric, exclude_self):
    rng = np.random.default_rng(7)
    x = _integer_data(rng, 3, 133, 7, dup_every=3)
    k = 132 if exclude_self else 133
    k = min(k, layerknn._core.cuda_max_k())
    gpu = layerknn.knn(_cuda(x), k, metric=metric, exclude_self=exclude_self)
    cpu = layerknn.knn(x, k, metric=metric, exclude_self=exclude_self)
    np.testing.assert_array_equal(gpu.indices.cpu().numpy(), cpu.indices)
    np.testing.assert_array_equal(gpu.scores.cpu().numpy(), cpu.scores)


@pytest.mark.parametrize("metric", METRICS)
def test_cross_form_and_database_split(metric):
    # Few query rows and many database rows: the engine splits the database over extra blocks
    # and merges the partial lists.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 40, 48)).astype(np.float32)
    y = rng.standard_normal((1, 3000, 48)).astype(np.float32)
    for k in (10, 100):
        nb = layerknn.knn(_cuda(x), k, metric=metric, y=_cuda(y))
        assert_neighbors_exact(nb.indices.cpu().numpy(), nb.scores.cpu().numpy(), x, k, metric,
                               y=y)


def test_split_path_matches_cpu_exactly_on_integer_data():
    rng = np.random.default_rng(12)
    x = _integer_data(rng, 1, 20, 16)
    y = _integer_data(rng, 1, 5000, 16)
    for k in (1, 32, 200):
        gpu = layerknn.knn(_cuda(x), k, metric="ip", y=_cuda(y))
        cpu = layerknn.knn(x, k, metric="ip", y=y)
        np.testing.assert_array_equal(gpu.indices.cpu().numpy(), cpu.indices)


def test_unaligned_and_odd_width_inputs_use_the_scalar_path():
    rng = np.random.default_rng(3)
    L, n, d = 2, 90, 13
    flat = torch.from_numpy(rng.standard_normal(L * n * d + 1).astype(np.float32)).cuda()
    x = flat[1:].view(L, n, d)  # 4-byte offset: not 16-byte aligned
    assert x.data_ptr() % 16 != 0
    nb = layerknn.knn(x, 7, metric="cosine")
    assert_neighbors_exact(nb.indices.cpu().numpy(), nb.scores.cpu().numpy(),
                           x.cpu().numpy(), 7, "cosine")


def test_larger_problem_matches_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 700, 300)).astype(np.float32)
    nb = layerknn.knn(_cuda(x), 10, metric="cosine")
    assert_neighbors_exact(nb.indices.cpu().numpy(), nb.scores.cpu().numpy(), x, 10, "cosine")


def test_non_default_stream_and_input_dtypes():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 200, 40)).astype(np.float32)
    expect = layerknn.knn(_cuda(x), 8)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs = _cuda(x)
        got = layerknn.knn(xs, 8)
    stream.synchronize()
    assert torch.equal(got.indices, expect.indices)
    assert torch.equal(got.scores, expect.scores)
    half = layerknn.knn(_cuda(x).half(), 8)
    assert half.indices.shape == (2, 200, 8) and half.indices.is_cuda


def test_k_above_max_k_is_a_clear_error():
    max_k = layerknn._core.cuda_max_k()
    assert max_k >= 256
    x = _cuda(np.random.default_rng(0).standard_normal((1, max_k + 10, 8)).astype(np.float32))
    with pytest.raises(ValueError, match=str(max_k)):
        layerknn.knn(x, max_k + 1)
    # The compiled engine itself also refuses, naming the limit.
    idx = torch.empty((1, max_k + 10, max_k + 1), dtype=torch.int32, device="cuda")
    val = torch.empty((1, max_k + 10, max_k + 1), dtype=torch.float32, device="cuda")
    with pytest.raises(ValueError, match="at most"):
        layerknn._core.knn_cuda(x.data_ptr(), 0, 1, max_k + 10, max_k + 10, 8, max_k + 1, 1, True,
                                idx.data_ptr(), val.data_ptr(), 0, 0)


def test_device_count_reports_a_gpu():
    count, why = layerknn._core.cuda_device_count()
    assert count >= 1 and isinstance(why, str)


@pytest.mark.parametrize("La,Lb,n,ka,kb,k", [(3, 2, 300, 10, 12, 10), (2, 70, 257, 5, 5, 5),
                                             (1, 1, 7, 3, 4, 1), (4, 40, 50, 300, 260, 256)])
def test_overlap_matches_cpu_exactly(La, Lb, n, ka, kb, k):
    rng = np.random.default_rng(La * 100 + Lb + n)
    a = rng.integers(0, 3 * k, size=(La, n, ka)).astype(np.int32)  # many duplicates / overlaps
    b = rng.integers(0, 3 * k, size=(Lb, n, kb)).astype(np.int32)
    mean_cpu, counts_cpu = layerknn.overlap(a, b, k, per_prompt=True)
    mean_gpu, counts_gpu = layerknn.overlap(_cuda(a), _cuda(b), k, per_prompt=True)
    np.testing.assert_array_equal(mean_gpu.cpu().numpy(), mean_cpu)  # bit-identical float64
    np.testing.assert_array_equal(counts_gpu.cpu().numpy().astype(np.int64),
                                  counts_cpu.astype(np.int64))
    mean_only = layerknn.overlap(_cuda(a), _cuda(b), k)
    np.testing.assert_array_equal(mean_only.cpu().numpy(), mean_cpu)


def test_overlap_of_knn_results_on_gpu():
    rng = np.random.default_rng(1)
    acts = _cuda(rng.standard_normal((4, 500, 32)).astype(np.float32))
    nb = layerknn.knn(acts, 10)
    diag = layerknn.overlap(nb, nb).cpu().numpy().diagonal()
    np.testing.assert_array_equal(diag, np.ones(4))


@pytest.mark.parametrize("env", [{"LAYERKNN_CUDA_SYNC": "1"}, {"LAYERKNN_CUDA_POOL": "0"},
                                 {"LAYERKNN_CUDA_SYNC": "1", "LAYERKNN_CUDA_POOL": "0"}])
def test_sync_and_plain_malloc_paths_give_the_same_results(monkeypatch, env):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 200, 40)).astype(np.float32)
    q = rng.standard_normal((1, 30, 40)).astype(np.float32)
    db = rng.standard_normal((1, 4000, 40)).astype(np.float32)  # database splits + merge
    a = rng.integers(0, 30, size=(3, 200, 10)).astype(np.int32)
    want = [layerknn.knn(_cuda(x), 7), layerknn.knn(_cuda(q), 50, metric="l2", y=_cuda(db))]
    want_overlap = layerknn.overlap(_cuda(a), _cuda(a), 10)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got = [layerknn.knn(_cuda(x), 7), layerknn.knn(_cuda(q), 50, metric="l2", y=_cuda(db))]
    for g, w in zip(got, want):
        assert torch.equal(g.indices, w.indices) and torch.equal(g.scores, w.scores)
    assert torch.equal(layerknn.overlap(_cuda(a), _cuda(a), 10), want_overlap)


_FAULT_SCRIPT = textwrap.dedent("""
    import os, sys, torch, layerknn
    from layerknn import _core

    def done(line):  # os._exit: no interpreter teardown on a context a fault has broken
        print(line, flush=True)
        os._exit(0)

    idx = torch.empty((1, 64, 4), dtype=torch.int32, device="cuda")
    val = torch.empty((1, 64, 4), dtype=torch.float32, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    bogus = 1 << 16  # 16-byte aligned and never mapped: the fused kernel faults reading it
    try:
        _core.knn_cuda(bogus, 0, 1, 64, 64, 8, 4, 0, True, idx.data_ptr(), val.data_ptr(), 0, stream)
    except RuntimeError as exc:
        done(f"AT_CALL {exc}")
    try:
        torch.cuda.synchronize()
    except Exception as exc:
        done(f"LATER {exc}")
    done("NO_ERROR")
""")


@pytest.mark.parametrize("sync", ["1", "0"])
def test_faulting_kernel_is_reported_not_swallowed(sync):
    env = {**os.environ, "LAYERKNN_CUDA_SYNC": sync}
    run = subprocess.run([sys.executable, "-c", _FAULT_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    if sync == "1":  # every launch synchronised: the layerknn call itself raises, naming the error
        assert run.stdout.startswith("AT_CALL CUDA error"), run.stdout + run.stderr
    else:  # asynchronous: at the call when the fault is already recorded, else at the next sync
        assert run.stdout.startswith(("AT_CALL", "LATER")), run.stdout + run.stderr
