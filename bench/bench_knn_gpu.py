"""Benchmark of layerknn's CUDA engine against torch and FAISS, plus a GPU-vs-CPU check mode.

``python bench/bench_knn_gpu.py --check`` compares GPU and CPU indices and scores on fresh random
inputs (bit-exact on integer-valued and on Gaussian data: both engines rank by the shared exact
score). The default run times exact
k-NN (cosine, k=10) on G1=(L=33, n=2048, d=4096), G2=(81, 2048, 8192), G3=(33, 16384, 4096)
against torch fp32 bmm+topk (TF32 off), torch with TF32 (inexact: agreement shown) and FAISS GPU
when importable, then the overlap of a 1000 x 1000 layer "mega matrix" (n=2048, k=10) against a
torch one-hot baseline on a slice. Prints medians, ratios, TFLOP/s and the fraction of the card's
fp32 peak, and appends the table to bench/RESULTS.md (and $OUT/ when set). Imports without a GPU.
``--dry-run`` runs the same code on the CPU with tiny shapes (no GPU needed; nothing appended), to
check the script itself. FAISS is optional: any failure to import it only skips its column.
"""

from __future__ import annotations

import os
import sys

# Benchmarks run with the machine's real BLAS settings (never done in tests).
if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
    for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(v, None)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Dense fp32 (non-tensor-core) peak, TFLOP/s, by device-name fragment.
FP32_PEAK_TFLOPS = [("H200", 67.0), ("H100 PCIe", 51.0), ("H100", 67.0), ("GH200", 67.0),
                    ("A100", 19.5), ("L40S", 91.6), ("A10", 31.2), ("L4", 30.3)]

CONFIGS = {"G1": (33, 2048, 4096), "G2": (81, 2048, 8192), "G3": (33, 16384, 4096),
           "T": (2, 96, 40)}  # T: the --dry-run shape


def fp32_peak(name: str) -> float | None:
    for fragment, peak in FP32_PEAK_TFLOPS:
        if fragment in name:
            return peak
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "uncommitted"
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def time_cuda(torch, fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time in ms of fn() measured with CUDA events (after `warmup` calls); wall clock
    when torch has no GPU (--dry-run)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def torch_knn(torch, x, k: int, tf32: bool, max_bytes: float = 8e9):
    """Cosine k-NN by bmm + topk, chunked over layers so the score matrices fit `max_bytes`."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    L, n, _ = x.shape
    chunk = max(1, int(max_bytes // (n * n * 4)))
    out = []
    for l0 in range(0, L, chunk):
        xn = torch.nn.functional.normalize(x[l0:l0 + chunk], dim=-1)
        s = torch.bmm(xn, xn.transpose(1, 2))
        s.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        out.append(s.topk(k, dim=-1).indices)
        del s
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.cat(out)


def faiss_knn(faiss, torch, x, k: int, res):
    """Cosine k-NN with one FAISS GPU flat index per layer (k+1 results, self dropped)."""
    out = []
    for layer in torch.nn.functional.normalize(x, dim=-1).cpu().numpy():
        index = faiss.GpuIndexFlatIP(res, layer.shape[1])
        index.add(layer)
        _, idx = index.search(layer, k + 1)
        out.append(idx)
    return out


def agreement_torch(torch, a, b) -> float:
    """Same as agreement() but on the GPU (for the large configs)."""
    eq = (a.long().unsqueeze(-1) == b.long().unsqueeze(-2)).any(-1)
    return float(eq.float().mean().item())


def run_check(torch, layerknn, dev="cuda") -> int:
    """GPU vs CPU engine on fresh random inputs; returns the number of failures."""
    seed = int(time.time()) % 100000
    rng = np.random.default_rng(seed)
    print(f"check: GPU vs CPU engine, seed {seed}")
    failures = 0
    shapes = [(3, 513, 96, 10), (2, 300, 61, 33), (1, 1000, 128, 256), (4, 257, 8, 1)]
    for L, n, d, k in shapes if dev == "cuda" else [(2, 70, 13, 5)]:
        # Integer data: every fp32 sum is exact, so both engines must agree bit for bit.
        xi = rng.integers(-3, 4, size=(L, n, d)).astype(np.float32)
        xi[:, 1::4] = xi[:, 0:(n + 2) // 4][:, : xi[:, 1::4].shape[1]]  # duplicate rows: ties
        xi[:, :, 0] = 4.0
        for metric in ("ip", "l2"):
            g = layerknn.knn(torch.from_numpy(xi).to(dev), k, metric=metric)
            c = layerknn.knn(xi, k, metric=metric)
            same = np.array_equal(g.indices.cpu().numpy(), c.indices) and np.array_equal(
                g.scores.cpu().numpy(), c.scores)
            failures += not same
            print(f"  integer {metric:6s} L={L} n={n} d={d} k={k}: {'identical' if same else 'DIFFERENT'}")
        # Gaussian data: both engines rank by the shared exact score, so also bit for bit.
        xg = rng.standard_normal((L, n, d)).astype(np.float32)
        for metric in ("cosine", "ip", "l2"):
            g = layerknn.knn(torch.from_numpy(xg).to(dev), k, metric=metric)
            c = layerknn.knn(xg, k, metric=metric)
            gi, gs = g.indices.cpu().numpy(), g.scores.cpu().numpy()
            same_rows = ((gi == c.indices) & (gs.view(np.int32) == c.scores.view(np.int32))).all(-1)
            failures += not same_rows.all()
            print(f"  gauss   {metric:6s} L={L} n={n} d={d} k={k}: {int(same_rows.sum())}/{L * n} rows "
                  "bit-identical")
    a = rng.integers(0, 40, size=(7, 333, 12)).astype(np.int32)
    b = rng.integers(0, 40, size=(45, 333, 10)).astype(np.int32)
    mg, cg = layerknn.overlap(torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev), 10, per_prompt=True)
    mc, cc = layerknn.overlap(a, b, 10, per_prompt=True)
    same = np.array_equal(mg.cpu().numpy(), mc) and \
        np.array_equal(cg.cpu().numpy().astype(np.int64), cc.astype(np.int64))
    failures += not same
    print(f"  overlap 7x45 layers n=333 k=10 (duplicates): {'identical' if same else 'DIFFERENT'}")
    print("check:", "PASS" if failures == 0 else f"FAIL ({failures})")
    return failures


def bench_knn(torch, layerknn, configs, k, repeats, peak, faiss, dev="cuda"):
    rows = []
    for name in configs:
        L, n, d = CONFIGS[name]
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn((L, n, d), device=dev, dtype=torch.float32, generator=gen)
        flop = 2.0 * L * n * n * d
        reps = repeats if name != "G3" else max(1, repeats // 2)
        ours = layerknn.knn(x, k)
        t_ours = time_cuda(torch, lambda: layerknn.knn(x, k), reps)
        ref = torch_knn(torch, x, k, tf32=False)
        agree_fp32 = agreement_torch(torch, ours.indices, ref)
        t_fp32 = time_cuda(torch, lambda: torch_knn(torch, x, k, tf32=False), reps)
        tf = torch_knn(torch, x, k, tf32=True)
        agree_tf32 = agreement_torch(torch, tf, ref)
        t_tf32 = time_cuda(torch, lambda: torch_knn(torch, x, k, tf32=True), reps)
        t_faiss = None
        if faiss is not None and name == "G1":
            res = faiss.StandardGpuResources()
            t0 = time.perf_counter()
            faiss_knn(faiss, torch, x, k, res)
            t_faiss = (time.perf_counter() - t0) * 1e3  # includes host round trips
        tflops = flop / (t_ours * 1e-3) / 1e12
        rows.append({
            "config": f"{name} L={L} n={n} d={d} k={k}", "layerknn_ms": t_ours,
            "torch_fp32_ms": t_fp32, "torch_tf32_ms": t_tf32, "faiss_ms": t_faiss,
            "agree_fp32": agree_fp32, "tf32_agree": agree_tf32,
            "tflops": tflops, "peak_frac": None if peak is None else tflops / peak,
        })
        r = rows[-1]
        if agree_fp32 < 0.999:
            print(f"  WARNING: layerknn and torch fp32 share only {agree_fp32:.5f} of neighbours "
                  "(expected ~1 up to fp32 near-ties)")
        print(f"  {r['config']}: layerknn {t_ours:.1f} ms ({tflops:.1f} TFLOP/s), torch fp32 "
              f"{t_fp32:.1f} ms (x{t_fp32 / t_ours:.2f}), torch tf32 {t_tf32:.1f} ms "
              f"(agreement {agree_tf32:.4f}), layerknn vs torch fp32 agreement {agree_fp32:.5f}")
        x = ours = ref = tf = None  # free before the next shape
        if dev == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_overlap(torch, layerknn, repeats, mega_layers=1000, n=2048, k=10, slice_layers=50, dev="cuda"):
    gen = torch.Generator(device=dev).manual_seed(1)
    a = torch.randint(0, n, (mega_layers, n, k), device=dev, dtype=torch.int32, generator=gen)
    b = torch.randint(0, n, (mega_layers, n, k), device=dev, dtype=torch.int32, generator=gen)
    half = torch.float16 if dev == "cuda" else torch.float32  # exact for these small counts
    t_mega = time_cuda(torch, lambda: layerknn.overlap(a, b), repeats)
    sa, sb = a[:slice_layers].contiguous(), b[:slice_layers].contiguous()

    def onehot_overlap():
        ma = torch.zeros((n, slice_layers, n), device=dev, dtype=half)
        mb = torch.zeros((n, slice_layers, n), device=dev, dtype=half)
        ma.scatter_(2, sa.permute(1, 0, 2).long(), 1.0)
        mb.scatter_(2, sb.permute(1, 0, 2).long(), 1.0)
        counts = torch.bmm(ma, mb.transpose(1, 2))  # [n, La, Lb], exact small integers
        return counts.float().sum(0).double() * (1.0 / (k * n))  # as the engines

    ours_slice = layerknn.overlap(sa, sb)
    same = torch.equal(ours_slice, onehot_overlap())
    t_slice = time_cuda(torch, lambda: layerknn.overlap(sa, sb), repeats)
    t_torch = time_cuda(torch, onehot_overlap, repeats)
    if not same:
        print("  WARNING: layerknn.overlap and the torch one-hot baseline disagree on the slice")
    print(f"  overlap mega {mega_layers}x{mega_layers} n={n} k={k}: {t_mega:.1f} ms; slice "
          f"{slice_layers}x{slice_layers}: layerknn {t_slice:.2f} ms vs torch one-hot {t_torch:.2f} ms "
          f"(x{t_torch / t_slice:.1f}), results identical: {same}")
    return {"mega_ms": t_mega, "slice_ms": t_slice, "torch_slice_ms": t_torch,
            "slice_identical": same, "mega": f"{mega_layers}x{mega_layers} n={n} k={k}",
            "slice": f"{slice_layers}x{slice_layers}"}


def markdown(card, rows, ov, peak) -> str:
    fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    lines = [
        f"\n## bench_knn_gpu.py — {card} — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
        f" — commit {git_commit()} — host {platform.node()}\n",
        "Exact cosine k-NN, median ms (CUDA events). torch fp32 = bmm+topk with TF32 off (exact "
        "fp32 rival); torch tf32 is inexact (agreement = fraction of its neighbours shared with "
        f"torch fp32). fp32 peak assumed: {fmt(peak)} TFLOP/s.\n",
        "| config | layerknn ms | torch fp32 ms | speed-up | torch tf32 ms | tf32 agreement | "
        "FAISS ms | agreement layerknn vs fp32 | TFLOP/s | % fp32 peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['layerknn_ms']:.1f} | {r['torch_fp32_ms']:.1f} | "
            f"x{r['torch_fp32_ms'] / r['layerknn_ms']:.2f} | {r['torch_tf32_ms']:.1f} | "
            f"{r['tf32_agree']:.4f} | {fmt(r['faiss_ms'])} | {r['agree_fp32']:.5f} | "
            f"{r['tflops']:.1f} | {fmt(None if r['peak_frac'] is None else 100 * r['peak_frac'])} |")
    if ov is not None:
        lines += [
            "",
            "| overlap | layerknn ms | torch one-hot ms | speed-up | identical |",
            "|---|---|---|---|---|",
            f"| mega {ov['mega']} | {ov['mega_ms']:.1f} | - | - | - |",
            f"| slice {ov['slice']} | {ov['slice_ms']:.2f} | {ov['torch_slice_ms']:.2f} | "
            f"x{ov['torch_slice_ms'] / ov['slice_ms']:.1f} | {ov['slice_identical']} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="GPU vs CPU engine check only")
    parser.add_argument("--configs", default="G1,G2,G3", help="subset of G1,G2,G3")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--no-overlap", action="store_true")
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU only, tiny shapes, nothing appended (checks the script itself)")
    args = parser.parse_args(argv)

    import torch

    import layerknn

    dev = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.configs, args.repeats, args.no_append = "T", 2, True
    elif not (torch.cuda.is_available() and layerknn.cuda_available()):
        print("bench_knn_gpu: needs a CUDA GPU, torch with CUDA and a CUDA build of layerknn; "
              f"torch.cuda={torch.cuda.is_available()}, layerknn={layerknn._core.cuda_device_count()}")
        return 2
    if args.check:
        return 1 if run_check(torch, layerknn, dev) else 0

    card = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)"
    peak = fp32_peak(card)
    print(f"bench_knn_gpu on {card} (fp32 peak {peak if peak else 'unknown'} TFLOP/s)")
    faiss = None
    if dev == "cuda":
        try:
            import faiss  # noqa: F401

            faiss = faiss if hasattr(faiss, "StandardGpuResources") else None
        except Exception:  # noqa: BLE001 - missing or broken (e.g. built for another numpy)
            faiss = None
    print(f"  FAISS GPU: {'yes' if faiss else 'not importable (skipped)'}")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rows = bench_knn(torch, layerknn, configs, args.k, args.repeats, peak, faiss, dev)
    if args.no_overlap:
        ov = None
    elif args.dry_run:
        ov = bench_overlap(torch, layerknn, args.repeats, mega_layers=6, n=64, k=5, slice_layers=3, dev=dev)
    else:
        ov = bench_overlap(torch, layerknn, args.repeats)
    table = markdown(card, rows, ov, peak)
    print(table)
    if not args.no_append:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as fh:
            fh.write(table)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_knn_gpu.md").write_text(table, encoding="utf-8")
        (Path(out) / "bench_knn_gpu.json").write_text(
            json.dumps({"card": card, "knn": rows, "overlap": ov}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
