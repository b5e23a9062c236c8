"""Measurements for bench/gpu_check.sh: how the CUDA engine compares with the CPU one, and the card.

Prints and writes as JSON (``--json``, rewritten after every section, so a timeout keeps what was
measured):

* GPU-vs-CPU identity per candidate path (``LAYERKNN_CUDA_KERNEL=fp32``: SIMT lists; ``tc``:
  tensor-core GEMM tiles, when built) and metric, on Gaussian data and on activation-like data (3
  "massive" feature dimensions scaled by 100, as in LLM residual streams): the fraction of index
  entries, of whole rows and of score bits that are identical, the share of neighbour sets that
  agree, and the largest score difference. Both paths re-rank by the CPU engine's exact score
  (csrc/common/exact_score.h), so every rate must be 1.
* Candidates per row inside each precision's window (fp32 SIMT, fp16 and bf16 GEMM operands) for
  cosine: the window of csrc/common/score_windows.h mirrored in NumPy/torch, counted on the card.
* Per-kernel (per-phase) times of one k-NN call per path (torch.profiler, where CUPTI works:
  row norms, packing, GEMM, select, fused, window, re-rank), its total time and achieved TFLOP/s
  (``tflops``: the full 2 L n^2 d product per second, comparable with ``bmm``; for ``tc`` also
  ``gemm_tflops``, the GEMM work it really does: the self-join computes only the blocks on and
  right of the diagonal of its tiles, about half).
* torch ``bmm`` ceilings of the card for the same shape in fp32 (TF32 off), TF32, bf16 and fp16.

``--dry-run`` runs every part on the CPU with tiny sizes (the "GPU" side is the CPU engine again),
so the script can be checked on a machine without a GPU. Sections fail independently: an error is
recorded in the JSON under "errors" and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

METRICS = ("cosine", "ip", "l2")


def gaussian(rng, L, n, d):
    return rng.standard_normal((L, n, d)).astype(np.float32)


def activation_like(rng, L, n, d, massive=3, factor=100.0):
    """Gaussian rows plus a shared offset, with `massive` feature dimensions scaled by `factor`."""
    x = rng.standard_normal((L, n, d)).astype(np.float32)
    x += 0.5 * rng.standard_normal((L, 1, d)).astype(np.float32)
    dims = rng.choice(d, size=min(massive, d), replace=False)
    x[:, :, dims] *= np.float32(factor)
    return x


def identity(gpu_idx, gpu_val, cpu_idx, cpu_val) -> dict:
    """Agreement of two (L, n, k) results: entry, row, score-bit and set identity rates."""
    same_idx = gpu_idx == cpu_idx
    same_bits = gpu_val.view(np.uint32) == cpu_val.view(np.uint32)
    rows = same_idx.all(-1) & same_bits.all(-1)
    sets = (np.sort(gpu_idx, -1) == np.sort(cpu_idx, -1)).all(-1)
    diff = np.abs(gpu_val.astype(np.float64) - cpu_val.astype(np.float64))
    scale = np.maximum(np.abs(cpu_val.astype(np.float64)), 1e-30)
    return {
        "index_identical": float(same_idx.mean()),
        "score_bits_identical": float(same_bits.mean()),
        "rows_identical": float(rows.mean()),
        "sets_identical": float(sets.mean()),
        "max_abs_score_diff": float(diff.max(initial=0.0)),
        "max_rel_score_diff": float((diff / scale).max(initial=0.0)),
    }


def to_device(torch, x, dev):
    return torch.from_numpy(np.ascontiguousarray(x)).to(dev)


def host(a) -> np.ndarray:
    return a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)


@contextlib.contextmanager
def candidate_path(kernel: str | None):
    """LAYERKNN_CUDA_KERNEL=kernel for the calls inside (read by the engine at each call)."""
    old = os.environ.get("LAYERKNN_CUDA_KERNEL")
    if kernel is not None:
        os.environ["LAYERKNN_CUDA_KERNEL"] = kernel
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LAYERKNN_CUDA_KERNEL", None)
        else:
            os.environ["LAYERKNN_CUDA_KERNEL"] = old


def kernels_to_check(layerknn, dry: bool) -> list[str]:
    if dry:
        return ["fp32"]
    return ["fp32"] + (["tc"] if layerknn._core.cuda_tensor_core_built() else [])


def run_identity(torch, layerknn, dev, shape, k, seed, kernels) -> list[dict]:
    L, n, d = shape
    rng = np.random.default_rng(seed)
    rows = []
    for name, make in (("gaussian", gaussian), ("activation-like 3 dims x100", activation_like)):
        x = make(rng, L, n, d)
        xd = to_device(torch, x, dev)
        for metric in METRICS:
            c = layerknn.knn(x, k, metric=metric)
            for kernel in kernels:
                with candidate_path(kernel):
                    g = layerknn.knn(xd, k, metric=metric)
                r = {"data": name, "metric": metric, "kernel": kernel, "L": L, "n": n, "d": d, "k": k,
                     **identity(host(g.indices), host(g.scores), c.indices, c.scores)}
                rows.append(r)
                print(f"  {name:28s} {metric:6s} {kernel:4s} index {r['index_identical']:.6f}  score bits "
                      f"{r['score_bits_identical']:.6f}  rows {r['rows_identical']:.6f}  sets "
                      f"{r['sets_identical']:.6f}  max |diff| {r['max_abs_score_diff']:.3g}")
    return rows


def _gamma(n: float, unit: float) -> float:
    return n * unit / (1 - n * unit)


def run_windows(torch, dev, shape, k, seed) -> list[dict]:
    """Cosine candidates per row inside each precision's window (mirror of score_windows.h)."""
    n, d = shape
    rng = np.random.default_rng(seed)
    u = 2.0**-24
    exact_err = _gamma(math.ceil(d / 16) + 4, u) * (1 + 1e-6) ** 2
    out = []
    for name, make in (("gaussian", gaussian), ("activation-like 3 dims x100", activation_like)):
        x = to_device(torch, make(rng, 1, n, d)[0], dev).double()
        a = (x / x.norm(dim=1, keepdim=True)).float()  # the fp32 operands (unit rows)
        for label, dtype in (("fp32 SIMT", None), ("fp16 GEMM", torch.float16), ("bf16 GEMM", torch.bfloat16)):
            if dtype is None:
                s = a @ a.T
                err = torch.full((n,), _gamma(d + 2, u) * (1 + 1e-6) ** 2 + exact_err, device=dev,
                                 dtype=torch.float64)
            else:
                p = a.to(dtype)
                s = (p.float() @ p.float().T)
                pn = p.double().norm(dim=1)
                en = (p.double() - a.double()).norm(dim=1)
                an = a.double().norm(dim=1) * (1 + 1e-6)
                err = en * pn.max() + an * en.max() + _gamma(d + 2, 4 * u) * pn * pn.max() + exact_err
            s.fill_diagonal_(-math.inf)
            kth = s.topk(k, dim=1).values[:, -1].double()
            window = 2 * err * (1 + 1e-6)
            counts = (s.double() >= (kth - window)[:, None]).sum(dim=1).double()
            r = {"data": name, "precision": label, "n": n, "d": d, "k": k,
                 "candidates_mean": float(counts.mean()), "candidates_max": float(counts.max()),
                 "window_mean": float(window.mean())}
            out.append(r)
            print(f"  {name:28s} {label:10s} candidates/row mean {r['candidates_mean']:.1f} max "
                  f"{r['candidates_max']:.0f}  (window {r['window_mean']:.2e}, k={k})")
    return out


class Timer:
    """Median milliseconds of fn(): CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, torch, dev):
        self.torch, self.cuda = torch, dev == "cuda"

    def __call__(self, fn, repeats=5, warmup=1) -> float:
        torch = self.torch
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def short_kernel_name(name: str) -> str:
    """'void ns::fused_knn_kernel<32, 128, ...>(...)' -> 'fused_knn_kernel<32, 128, ...>' (trimmed)."""
    m = re.search(r"(\w+)(<[^()]*>)?\s*\(", name)
    if not m:
        return name[:80]
    return (m.group(1) + (m.group(2) or ""))[:80]


def kernel_times(torch, fn) -> dict[str, float] | None:
    """Total device milliseconds per kernel during one fn() call, or None where the profiler
    cannot see CUDA kernels (CPU, or CUPTI unavailable)."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - CUPTI may be unavailable (gVisor, no permission)
        print(f"      profiler failed: {type(exc).__name__}: {exc}")
        return None
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        if us is None:
            us = getattr(ev, "cuda_time_total", 0.0)
        if us:
            key = short_kernel_name(ev.key)
            out[key] = out.get(key, 0.0) + us / 1e3
    return out or None


def tc_self_join_flop(L: int, n: int, d: int) -> float:
    """GEMM flops of the tensor-core self-join: per tile of rows, the columns from its first row on."""
    tile = int(os.environ.get("LAYERKNN_CUDA_TC_TILE_ROWS", "4096"))  # the default unless memory is short
    return 2.0 * L * d * sum(min(tile, n - r) * (n - r) for r in range(0, n, tile))


def run_phases(torch, layerknn, dev, shape, k, timer, kernels) -> dict:
    L, n, d = shape
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn((L, n, d), device=dev, dtype=torch.float32, generator=gen)
    flop = 2.0 * L * n * n * d
    result = {"L": L, "n": n, "d": d, "k": k}
    for kernel in kernels:
        result[kernel] = {}
        for metric in METRICS:
            with candidate_path(kernel):
                ms = timer(lambda m=metric: layerknn.knn(x, k, metric=m), repeats=3)
                kernels_ms = kernel_times(torch, lambda m=metric: layerknn.knn(x, k, metric=m))
            r = {"ms": ms, "tflops": flop / (ms * 1e-3) / 1e12, "kernels_ms": kernels_ms}
            done = ""
            if kernel == "tc":
                r["gemm_tflops"] = tc_self_join_flop(L, n, d) / (ms * 1e-3) / 1e12
                done = f" ({r['gemm_tflops']:.2f} TFLOP/s of GEMM work done, symmetric half)"
            result[kernel][metric] = r
            print(f"  knn {kernel:4s} {metric:6s} L={L} n={n} d={d} k={k}: {ms:.2f} ms, "
                  f"{r['tflops']:.2f} TFLOP/s{done}")
            for name, kms in sorted((kernels_ms or {}).items(), key=lambda kv: -kv[1]):
                print(f"      {kms:9.3f} ms  {name}")
            if kernels_ms is None:
                print("      (per-kernel times not available here)")
    return result


def run_ceilings(torch, dev, shape, timer) -> dict:
    """torch.bmm TFLOP/s for (L, n, d) x (L, d, n) in fp32, TF32, bf16 and fp16."""
    L, n, d = shape
    flop = 2.0 * L * n * n * d
    out = {}
    gen = torch.Generator(device=dev).manual_seed(2)
    a32 = torch.randn((L, n, d), device=dev, generator=gen)
    b32 = torch.randn((L, d, n), device=dev, generator=gen)
    old = torch.backends.cuda.matmul.allow_tf32
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        try:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a, b = a32.to(dtype), b32.to(dtype)
            ms = timer(lambda a=a, b=b: torch.bmm(a, b), repeats=5, warmup=2)
            out[label] = {"ms": ms, "tflops": flop / (ms * 1e-3) / 1e12}
            print(f"  bmm {label:4s} L={L} n={n} d={d}: {ms:.2f} ms, {out[label]['tflops']:.1f} TFLOP/s")
        except Exception as exc:  # noqa: BLE001 - one dtype unsupported must not hide the others
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  bmm {label}: {out[label]['error']}")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny sizes")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)

    import torch

    import layerknn

    dry = args.dry_run
    dev = "cpu" if dry else "cuda"
    if not dry and not (torch.cuda.is_available() and layerknn.cuda_available()):
        print(f"gpu_check.py: needs a GPU and a CUDA build of layerknn; torch.cuda="
              f"{torch.cuda.is_available()}, layerknn={layerknn._core.cuda_device_count()}")
        return 2
    ident_shape = (2, 64, 32) if dry else (4, 2048, 1024)
    phase_shape = (2, 128, 64) if dry else (8, 4096, 4096)
    k = min(args.k, ident_shape[1] - 1)
    timer = Timer(torch, dev)
    card = "cpu (dry run)" if dry else torch.cuda.get_device_name(0)
    result = {"card": card, "dry_run": dry, "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "errors": {}}
    print(f"gpu_check.py on {card}")
    kernels = kernels_to_check(layerknn, dry)
    print(f"candidate paths: {kernels}")
    sections = (
        ("identity", "GPU vs CPU identity per candidate path (fresh data, seed 1234)",
         lambda: run_identity(torch, layerknn, dev, ident_shape, k, 1234, kernels)),
        ("windows", "cosine candidates per row inside each precision's window",
         lambda: run_windows(torch, dev, ident_shape[1:], k, 99)),
        ("knn_timing", "k-NN time, TFLOP/s and per-kernel (per-phase) times per candidate path",
         lambda: run_phases(torch, layerknn, dev, phase_shape, k, timer, kernels)),
        ("bmm_ceilings", "torch bmm ceilings on the same shape",
         lambda: run_ceilings(torch, dev, phase_shape, timer)),
    )

    def save():
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")

    for key, title, fn in sections:
        print(f"\n{title}")
        try:
            result[key] = fn()
        except Exception as exc:  # noqa: BLE001 - record, carry on with the next section
            result["errors"][key] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        if not dry:
            torch.cuda.empty_cache()
        save()
    if "knn_timing" in result and "bmm_ceilings" in result:
        fp32 = result["bmm_ceilings"].get("fp32", {}).get("tflops")
        for kernel in kernels:
            ours = result["knn_timing"].get(kernel, {}).get("cosine", {}).get("tflops")
            if fp32 and ours:
                result[f"cosine_{kernel}_vs_fp32_bmm"] = ours / fp32
                print(f"\nlayerknn cosine k-NN ({kernel}) reaches {100 * ours / fp32:.1f}% of torch's fp32 bmm rate")
    save()
    if args.json is not None:
        print(f"results: {args.json}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
