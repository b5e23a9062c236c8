"""The CUDA engine returns the CPU engine's answer bit for bit, proved without a GPU.

The whole CUDA engine (host drivers and every kernel, cuBLAS included) runs under the CPU
emulation of csrc/cuda/emulation (see tests/emulation.py) on non-integer data: Gaussian rows,
rows with three massive feature dimensions (x100, as real LLM activations have), duplicated rows
and near-ties, for cosine, inner product and squared L2, k in {1, 10, 33, 256}, odd sizes. Its
indices and scores must equal the CPU engine's (layerknn.knn on NumPy arrays) bit for bit, on
the SIMT candidate path (LAYERKNN_CUDA_KERNEL=fp32) and on the tensor-core path (tc: fp16/bf16
GEMM operands) under every emulated fp32 accumulation order of the GEMM (sequential, reversed,
pairwise, blocked, random permutation, truncation towards zero): the candidate windows of
common/score_windows.h must hold whatever order a GPU sums in. check_windows tries to break those
windows directly, on adversarial rows.

The tensor-core path runs with small GEMM tiles (LAYERKNN_CUDA_TC_TILE_ROWS) so that each problem
spans several: the self-join then computes only the blocks on and right of the diagonal and feeds
each to the rows below it transposed (the emulated cuBLAS counts the entries it computed), and a
row's candidates are selected over several segments. Cross joins and self-joins that keep the
row itself run through the same path.
"""

from __future__ import annotations

import os
import subprocess
import zlib

import numpy as np
import pytest

import layerknn
from emulation import program

METRICS = {"ip": 0, "cosine": 1, "l2": 2}
ORDERS = ["sequential", "reversed", "pairwise", "blocked", "random", "truncated"]
TC_TILE_ROWS = 24  # n = 71: 3 row tiles; n = 300: 13


def _data(kind: str, L: int, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((L, n, d)).astype(np.float32)
    if kind == "massive":
        x[:, :, [0, d // 2, d - 1]] *= 100  # a few outlier features dominate every norm
    elif kind == "ties":
        x[:, 1::7] = x[:, 0:-1:7][:, : x[:, 1::7].shape[1]]  # exact duplicate rows
        near = x[:, 3::5] * np.float32(1 + 2**-22)  # rows a few ulps from others (near-ties)
        x[:, 4::5][:, : near.shape[1]] = near[:, : x[:, 4::5].shape[1]]
    return x


def _cases(kernel: str):
    cases = []
    for metric in METRICS:
        for kind in ("gaussian", "massive", "ties"):
            for k in (1, 10, 33):
                cases.append((metric, kind, k, 2, 71, 37))
    # k = 256 (n = 300) costs ~10 s of emulation per case: each metric on one path, cosine on both.
    big = {"fp32": ("cosine", "l2"), "tc": ("cosine", "ip")}[kernel]
    cases += [(metric, "massive", 256, 1, 300, 13) for metric in big]
    return cases


# Every other order of the tensor-core GEMM on a subset: each metric and data kind once.
ORDER_CASES = [("cosine", "gaussian", 10, 2, 71, 37), ("ip", "massive", 10, 2, 71, 37),
               ("l2", "ties", 33, 2, 71, 37), ("cosine", "massive", 1, 2, 71, 37)]


def _seed(case) -> int:
    return zlib.crc32(repr(case).encode())


def _inputs(case, join: tuple[int, bool]) -> tuple[np.ndarray, np.ndarray | None]:
    """x and, for a cross join (join = (m, exclude_self) with m > 0), y of a case."""
    metric, kind, k, L, n, d = case
    x = _data(kind, L, n, d, _seed(case))
    return x, (_data(kind, L, join[0], d, _seed(case) + 1) if join[0] else None)


def _run_engine(cases, kernel: str, order: str, tmp_path, joins=None):
    """(indices, scores, stats) of the emulated CUDA engine for each case (self-joins by default)."""
    joins = joins or [(0, True)] * len(cases)
    blobs = []
    for case, join in zip(cases, joins):
        metric, kind, k, L, n, d = case
        x, y = _inputs(case, join)
        m = n if y is None else y.shape[1]
        head = np.array([L, n, m, d, k, METRICS[metric], y is not None, join[1]], np.int64)
        blobs.append(head.tobytes() + x.tobytes() + (b"" if y is None else y.tobytes()))
    src, dst = tmp_path / "cases.bin", tmp_path / "out.bin"
    src.write_bytes(b"".join(blobs))
    env = dict(os.environ, LAYERKNN_CUDA_KERNEL=kernel, LAYERKNN_EMU_GEMM_ORDER=order,
               LAYERKNN_CUDA_TC_TILE_ROWS=str(TC_TILE_ROWS))
    done = subprocess.run([str(program("emulate_engine")), str(src), str(dst)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("case")]
    assert len(lines) == len(cases), done.stdout[-2000:]
    data = dst.read_bytes()
    out, at = [], 0
    for (_metric, _kind, k, L, n, _d), line in zip(cases, lines):
        count = L * n * k
        idx = np.frombuffer(data, np.int32, count, at).reshape(L, n, k)
        at += 4 * count
        scores = np.frombuffer(data, np.float32, count, at).reshape(L, n, k)
        at += 4 * count
        stats = {key: int(v) for key, v in (kv.split("=") for kv in line.split()[1:])}
        out.append((idx, scores, stats))
    return out


def _tc_gemm_entries(L: int, n: int, m: int, self_join: bool) -> int:
    """GEMM outputs of the tensor-core path: the self-join's blocks on and right of the diagonal."""
    tiles = range(0, n, TC_TILE_ROWS)
    return L * sum(min(TC_TILE_ROWS, n - r) * (m - r if self_join else m) for r in tiles)


def _check_identical(cases, results, kernel: str, order: str, joins=None) -> int:
    """Asserts bit identity with the CPU engine; returns how many scores a plain fp32 chain misses."""
    joins = joins or [(0, True)] * len(cases)
    chain_differs = 0
    for case, join, (idx, scores, stats) in zip(cases, joins, results):
        metric, kind, k, L, n, d = case
        x, y = _inputs(case, join)
        ref = layerknn.knn(x, k, metric=metric, y=y, exclude_self=join[1])
        name = f"{kernel}/{order} {metric} {kind} k={k} join={join}"
        np.testing.assert_array_equal(idx, np.asarray(ref.indices), err_msg=name)
        np.testing.assert_array_equal(scores.view(np.int32), np.asarray(ref.scores).view(np.int32), err_msg=name)
        assert (stats["gemm_calls"] > 0) == (kernel == "tc"), name
        if kernel == "tc":
            m = n if y is None else y.shape[1]
            assert stats["gemm_entries"] == _tc_gemm_entries(L, n, m, y is None), name
            # The windows prune: rows keep the k best and under half of the rest on average.
            assert stats["candidates"] + stats["scanned"] * m < L * n * (k + (m - k) // 2), name
        chain_differs += stats["differs_from_chain"]
    return chain_differs


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["fp32", "tc"])
def test_emulated_cuda_engine_is_bit_identical_to_cpu(kernel, tmp_path):
    cases = _cases(kernel)
    results = _run_engine(cases, kernel, "sequential", tmp_path)
    chain_differs = _check_identical(cases, results, kernel, "sequential")
    # The data tells the exact score apart from a plain sequential fp32 sum (the first CUDA
    # engine's score): identity is not an accident of easy inputs.
    assert chain_differs > 0


@pytest.mark.slow
@pytest.mark.parametrize("order", ORDERS[1:])
def test_tensor_core_path_holds_for_every_accumulation_order(order, tmp_path):
    results = _run_engine(ORDER_CASES, "tc", order, tmp_path)
    _check_identical(ORDER_CASES, results, "tc", order)


@pytest.mark.slow
def test_tensor_core_path_cross_joins_and_self_kept(tmp_path):
    # A cross join (every block computed) and self-joins keeping the row itself, over several tiles.
    cases = [("cosine", "ties", 10, 2, 53, 29), ("l2", "massive", 1, 1, 61, 21), ("ip", "ties", 33, 1, 50, 17)]
    joins = [(0, False), (40, False), (0, False)]
    results = _run_engine(cases, "tc", "random", tmp_path, joins)
    _check_identical(cases, results, "tc", "random", joins)


def test_candidate_windows_survive_adversarial_rows():
    run = subprocess.run([str(program("check_windows", with_drivers=False))], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def test_unknown_kernel_and_bad_tile_knobs_are_refused(tmp_path):
    x = _data("gaussian", 1, 20, 5, 0)
    src = tmp_path / "cases.bin"
    src.write_bytes(np.array([1, 20, 20, 5, 3, 1, 0, 1], np.int64).tobytes() + x.tobytes())
    env = dict(os.environ, LAYERKNN_CUDA_KERNEL="fast")
    done = subprocess.run([str(program("emulate_engine")), str(src), str(tmp_path / "o.bin")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "LAYERKNN_CUDA_KERNEL must be auto, fp32 or tc, got 'fast'" in done.stdout
    env = dict(os.environ, LAYERKNN_CUDA_KERNEL="tc", LAYERKNN_CUDA_TC_TILE_ROWS="0")
    done = subprocess.run([str(program("emulate_engine")), str(src), str(tmp_path / "o.bin")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "LAYERKNN_CUDA_TC_TILE_ROWS must be a positive integer, got '0'" in done.stdout
