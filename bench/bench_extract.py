"""Benchmark: layerknn.extract vs the per-prompt ``output_hidden_states`` loop.

The rival is what a researcher writes first: for each prompt, run the model with
``output_hidden_states=True`` and mean-pool every hidden state. It is timed twice: as written
(the full causal LM, logits included) and as a stronger variant on the headless base model
(no logits, like extract). Both produce (L+1, n, d) mean-pooled activations over the
same 512 prompts (builtin:stdlib-docs, varied lengths) on the offline aliases; results are
checked to agree before timing. Reports prompts/s, the speed-up, and peak resident memory
added during each run (Linux VmHWM, reset between runs). Usage:
python bench/bench_extract.py [--threads 2] [--n 512] [--models smollm2-135m gemma3-270m]

``--roofline`` measures instead extract's achieved GFLOP/s (block FLOPs of the real tokens, see
_roofline.py) against this machine's torch.matmul peak of the same shapes and dtype, measured in
the same run at the same threads, with the padding waste, passes, attention implementation and
thread count: python bench/bench_extract.py --roofline --n 256 --max-length 64 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import append_results, reexec_without_blas_throttles

reexec_without_blas_throttles()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import layerknn  # noqa: E402
from layerknn._blocks import base_model_of  # noqa: E402


def prompts(n: int) -> list:
    try:
        return layerknn.load_texts("builtin:stdlib-docs", n=n)
    except Exception:  # deterministic fallback of varied lengths
        words = "layer model token prompt neighbour overlap vector space depth width".split()
        return [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + (i * 37) % 120)) for i in range(n)]


def loop_reference(model, tokenizer, texts, max_length, headless=True):
    """Per prompt: output_hidden_states, then mean-pool each layer (float32)."""
    run = base_model_of(model) if headless else model
    columns = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt").input_ids
            states = run(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            columns.append(torch.stack([h[0].float().mean(0) for h in states]))
    return torch.stack(columns, dim=1)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measured(fn):
    """(result, (wall s, process CPU s), peak RSS added in MiB) of fn(); peak via VmHWM after a reset.

    CPU seconds are reported beside wall time because the shared benchmark machine is often
    busy with other jobs: wall time then inflates unevenly, CPU time much less so.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS counter
    except OSError:
        pass
    before = _status_kib("VmRSS")
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds = (time.perf_counter() - start, time.process_time() - start_cpu)
    peak = _status_kib("VmHWM")
    return result, seconds, max(0, peak - before) / 1024


def roofline(args, texts) -> None:
    """One row per (model, dtype): extract's GFLOP/s vs the GEMM peak of its shapes (same run, same threads)."""
    from _roofline import TokenCounter, block_flops, gemm_peak, gemm_shapes

    from layerknn._blocks import find_model_parts

    rows = []
    for alias in args.models:
        for dtype in args.dtypes:
            model, tokenizer = layerknn.load_model(alias, dtype=dtype)
            attn = getattr(model.config, "_attn_implementation", None)
            layerknn.extract(model, texts[:8], tokenizer=tokenizer, max_length=args.max_length, progress=False)
            counter = TokenCounter(find_model_parts(model).blocks[0])
            start, start_cpu = time.perf_counter(), time.process_time()
            acts = layerknn.extract(model, texts, tokenizer=tokenizer, max_length=args.max_length, progress=False)
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            counter.remove()
            real = int(acts.token_counts.sum())
            flops = block_flops(model.config, acts.token_counts.tolist())
            peak, peak_cpu = gemm_peak(gemm_shapes(model.config, 1024), getattr(torch, dtype))
            achieved, achieved_cpu = flops / wall / 1e9, flops / cpu / 1e9
            rows.append(f"| {alias} | {dtype} | {attn} | {torch.get_num_threads()} | {args.n} | {real} | "
                        f"{counter.rows / real - 1:.1%} | {counter.passes} | {flops / 1e12:.3f} | {wall:.1f} | "
                        f"{cpu:.1f} | {achieved:.1f} | {peak:.1f} | {achieved / peak:.0%} | {achieved_cpu:.1f} | "
                        f"{peak_cpu:.1f} | {achieved_cpu / peak_cpu:.0%} |")
            print(rows[-1], flush=True)
            model = tokenizer = acts = None
    table = "\n".join([
        "| model | dtype | attention | threads | prompts | real tokens | padding waste | passes | block TFLOP | "
        "wall s | CPU s | extract GFLOP/s | GEMM peak GFLOP/s | ratio (wall) | extract GFLOP/CPU-s | "
        "GEMM GFLOP/CPU-s | ratio (CPU) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    table += (f"\n\nSIMD level: torch {torch.backends.cpu.get_cpu_capability()}, layerknn "
              f"{layerknn._core.simd_level()}. Prompts from builtin:stdlib-docs, "
              f"max_length={args.max_length}, last-token pooling. Block FLOPs: QKV/O projections, MLP (gated: 3 "
              "matrices), causal attention t(t+1)/2 pairs, real tokens only. GEMM peak: torch.matmul of the "
              "blocks' shapes with 1024 rows, same dtype and threads, best of 5, measured right after the extract.")
    if args.dry_run:
        print(table)
        return
    append_results("extract at the roofline: achieved GFLOP/s vs this machine's GEMM peak", table,
                   threads=args.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--chunks", type=int, default=8, help="interleaving chunks")
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not append it")
    parser.add_argument("--roofline", action="store_true", help="GFLOP/s vs the GEMM peak instead of the loops")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "bfloat16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = prompts(args.n)
    if args.roofline:
        roofline(args, texts)
        return

    rows = []
    for alias, dtype in [(alias, dtype) for alias in args.models for dtype in args.dtypes]:
        model, tokenizer = layerknn.load_model(alias, dtype=dtype)
        # Correctness first (and warm-up for both paths). bf16 GEMMs round per batch shape, so
        # batched and per-prompt bf16 activations agree only to bf16's precision.
        tolerance = 1e-5 if dtype == "float32" else 5e-2
        check = texts[:16]
        expected = loop_reference(model, tokenizer, check, args.max_length)
        got = layerknn.extract(model, check, pooling="mean", max_length=args.max_length, progress=False).values
        scale = expected.abs().amax(dim=(1, 2), keepdim=True)
        worst = float(((got - expected).abs() / scale).max())
        assert worst < tolerance, f"{alias} {dtype}: extract disagrees with the loop (relative error {worst:.2e})"

        # The machine is shared: interleave the methods chunk by chunk (rotating their order)
        # so that all three see the same background load, and sum the times.
        chunk = args.n // args.chunks
        methods = {
            "extract": lambda part: layerknn.extract(model, part, pooling="mean", max_length=args.max_length,
                                                     progress=False).values,
            "loop": lambda part: loop_reference(model, tokenizer, part, args.max_length),
            "full": lambda part: loop_reference(model, tokenizer, part, args.max_length, headless=False),
        }
        totals = {name: [0.0, 0.0] for name in methods}
        peaks = {name: 0.0 for name in methods}
        outputs = {"extract": [], "loop": []}
        for c in range(args.chunks):
            part = texts[c * chunk:(c + 1) * chunk]
            names = list(methods)
            for name in names[c % 3:] + names[:c % 3]:
                out, (wall, cpu), peak = measured(lambda: methods[name](part))
                totals[name][0] += wall
                totals[name][1] += cpu
                peaks[name] = max(peaks[name], peak)
                if name in outputs:
                    outputs[name].append(out)
            print(f"{alias}: chunk {c + 1}/{args.chunks}: " +
                  ", ".join(f"{k} {v[0]:.0f}s" for k, v in totals.items()), flush=True)
        acts_values = torch.cat(outputs["extract"], dim=1)
        loop = torch.cat(outputs["loop"], dim=1)
        # Peak memory of one extract call over all prompts (untimed).
        acts, _, mem_full_extract = measured(
            lambda: layerknn.extract(model, texts[: chunk * args.chunks], pooling="mean",
                                     max_length=args.max_length, progress=False)
        )
        close = 1e-3 if dtype == "float32" else 5e-2
        assert torch.allclose(acts.values.float(), acts_values.float(), rtol=close * 0.1,
                              atol=close * float(loop.abs().max()))
        t_extract, t_loop, t_full = (tuple(totals[k]) for k in ("extract", "loop", "full"))
        mem_extract, mem_loop, mem_full = mem_full_extract, peaks["loop"], peaks["full"]
        worst_all = float(((acts.values.float() - loop.float()).abs()
                           / loop.float().abs().amax(dim=(1, 2), keepdim=True)).max())
        buffer_mib = acts.values.numel() * acts.values.element_size() / 2**20
        tokens = int(acts.token_counts.sum())
        for method, seconds, memory in [
            ("layerknn.extract (batch auto)", t_extract, mem_extract),
            ("loop: model(ids, output_hidden_states=True)", t_full, mem_full),
            ("loop on the base model (no logits)", t_loop, mem_loop),
        ]:
            (wall, cpu), (wall_x, cpu_x) = seconds, t_extract
            rows.append(
                f"| {alias} | {dtype} | {method} | {args.n / wall:.2f} | {args.n / cpu:.2f} | {tokens / cpu:.0f} | "
                f"{wall / wall_x:.1f}× | {cpu / cpu_x:.1f}× | {memory:.0f} | {buffer_mib:.1f} | "
                f"{f'{worst_all:.1e}' if seconds is t_extract else ''} |"
            )
        model = tokenizer = acts = loop = None  # free before the next model loads

    table = "\n".join(
        [
            "| model | dtype | method | prompts/s (wall) | prompts/CPU-s | tokens/CPU-s | wall / extract | "
            "CPU / extract | peak RSS added (MiB) | output buffer (MiB) | max rel. diff |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    table += (
        f"\n\nTimes are sums over {args.chunks} interleaved chunks (methods rotate order per chunk). "
        "Peak RSS: one extract call over all prompts; the loops' worst chunk. "
        f"{args.n} prompts from builtin:stdlib-docs, mean pooling over all L+1 hidden states, "
        f"max_length={args.max_length}, {'/'.join(args.dtypes)} weights (dequantised GGUF), "
        f"torch.set_num_threads({args.threads}); "
        "A 16-prompt correctness check/warm-up runs first; 'max rel. diff' is "
        "|extract - loop| / per-layer max |loop|. CPU-s = process CPU seconds (2 threads can give up to 2 per "
        "wall second); the machine is shared, so wall ratios are noisier than CPU ratios."
    )
    if args.dry_run:
        print(table)
        return
    append_results("extract: layerknn.extract vs per-prompt output_hidden_states loop (CPU)", table,
                   threads=args.threads)


if __name__ == "__main__":
    main()
