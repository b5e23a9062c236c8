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


def _run_engine(cases, kernel: str, order: str, tmp_path):
    """(indices, scores, stats) of the emulated CUDA engine for each case."""
    blobs = []
    for case in cases:
        metric, kind, k, L, n, d = case
        x = _data(kind, L, n, d, _seed(case))
        blobs.append(np.array([L, n, n, d, k, METRICS[metric], 0, 1], np.int64).tobytes() + x.tobytes())
    src, dst = tmp_path / "cases.bin", tmp_path / "out.bin"
    src.write_bytes(b"".join(blobs))
    env = dict(os.environ, LAYERKNN_CUDA_KERNEL=kernel, LAYERKNN_EMU_GEMM_ORDER=order)
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


def _check_identical(cases, results, kernel: str, order: str) -> int:
    """Asserts bit identity with the CPU engine; returns how many scores a plain fp32 chain misses."""
    chain_differs = 0
    for case, (idx, scores, stats) in zip(cases, results):
        metric, kind, k, L, n, d = case
        ref = layerknn.knn(_data(kind, L, n, d, _seed(case)), k, metric=metric)
        name = f"{kernel}/{order} {metric} {kind} k={k}"
        np.testing.assert_array_equal(idx, np.asarray(ref.indices), err_msg=name)
        np.testing.assert_array_equal(scores.view(np.int32), np.asarray(ref.scores).view(np.int32), err_msg=name)
        assert (stats["gemm_calls"] > 0) == (kernel == "tc"), name
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


def test_candidate_windows_survive_adversarial_rows():
    run = subprocess.run([str(program("check_windows", with_drivers=False))], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def test_unknown_kernel_knob_is_refused(tmp_path):
    x = _data("gaussian", 1, 20, 5, 0)
    src = tmp_path / "cases.bin"
    src.write_bytes(np.array([1, 20, 20, 5, 3, 1, 0, 1], np.int64).tobytes() + x.tobytes())
    env = dict(os.environ, LAYERKNN_CUDA_KERNEL="fast")
    done = subprocess.run([str(program("emulate_engine")), str(src), str(tmp_path / "o.bin")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "LAYERKNN_CUDA_KERNEL must be auto, fp32 or tc, got 'fast'" in done.stdout
