"""Benchmark layerknn's CPU k-NN engine on real pooled activations against FAISS and torch.

Activations of the offline models (aliases smollm2-135m, gemma3-270m, minilm-l6) over ``--n``
prompts of ``builtin:stdlib-docs``, last-token and mean pooling, every layer, are extracted once
and cached under the layerknn cache root (``$LAYERKNN_CACHE_DIR`` or ~/.cache/layerknn, folder
``bench-activations``). For each stack: cosine k-NN by layerknn.knn, FAISS IndexFlatIP and torch
bmm+topk at the same thread count; neighbour sets are compared first (equal sets, and equal up
to ties: the rival's k-th float64 score equals ours within 1e-6), then the three are timed in
interleaved rounds. Per layer it prints the tile kernel table layerknn chose, the candidates per
row it scored exactly, and the single-layer times of layerknn and FAISS. Prints the CPU's SIMD
level and tile precisions; ``--record`` appends the summary table to bench/RESULTS.md.

    python bench/bench_knn_real.py [--n 2048] [--max-length 128] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, faiss_knn, isa_note, reexec_without_blas_throttles  # noqa: E402

reexec_without_blas_throttles()

import numpy as np  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m", "minilm-l6")
POOLINGS = ("last", "mean")
DATASET = "builtin:stdlib-docs"


def cached_activations(alias: str, pooling: str, n: int, max_length: int | None, models: dict):
    """The (S, n, d) float32 activations of one model and pooling, extracted on first use."""
    import layerknn
    from layerknn.cache import default_cache_dir

    folder = default_cache_dir() / "bench-activations"
    path = folder / f"{alias}-{pooling}-n{n}-len{max_length or 'all'}.npz"
    if path.exists():
        return layerknn.Activations.load(path).values.float().numpy()
    if alias not in models:
        print(f"loading {alias} (GGUF models dequantise on first use, a minute or two) ...", flush=True)
        models[alias] = layerknn.load_model(alias)  # (model, tokenizer)
    texts = layerknn.load_texts(DATASET, n=n)
    start = time.perf_counter()
    model, tokenizer = models[alias]
    acts = layerknn.extract(model, texts, tokenizer=tokenizer, pooling=pooling, max_length=max_length,
                            progress=False)
    print(f"extracted {alias}/{pooling} in {time.perf_counter() - start:.0f} s", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    acts.save(path)
    return acts.values.float().numpy()


def layerknn_knn(x: np.ndarray, k: int, threads: int) -> np.ndarray:
    import layerknn

    return np.asarray(layerknn.knn(x, k, metric="cosine", num_threads=threads).indices)


def layer_reports(x: np.ndarray, k: int, threads: int) -> list[tuple[str, float]]:
    """(tile table, candidates per row) of each layer searched alone. A layer of many identical
    rows is searched by its distinct rows (layerknn._duplicates): its table is marked so, and its
    candidates are those of that smaller search."""
    from layerknn import _core, _duplicates

    out = []
    for layer in range(x.shape[0]):
        layerknn_knn(x[layer:layer + 1], k, threads)
        table, count = _core.last_knn_report()[0]
        groups = _duplicates.repeated_rows(x[layer])
        out.append((table if groups is None else f"{table} ({len(groups.first)} distinct rows)", count))
    return out


def torch_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Normalise, one batched matmul, mask the diagonal, topk."""
    import torch

    t = torch.from_numpy(x)
    t = t / t.norm(dim=2, keepdim=True)
    scores = torch.bmm(t, t.transpose(1, 2))
    scores.diagonal(dim1=1, dim2=2).fill_(-float("inf"))
    return scores.topk(k, dim=2).indices.numpy()


def agreement(x: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(fraction of rows with equal neighbour sets, fraction equal up to ties): a row whose sets
    differ still agrees up to ties when both k-th best float64 cosines match within 1e-6."""
    L, n, k = ours.shape
    same = np.sort(ours, axis=2) == np.sort(theirs.astype(ours.dtype), axis=2)
    same = same.all(axis=2)
    tied = same.copy()
    for layer, row in zip(*np.nonzero(~same)):
        v = x[layer].astype(np.float64)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        kth = [np.sort(v[ids] @ v[row])[0] for ids in (ours[layer, row], theirs[layer, row])]
        tied[layer, row] = abs(kth[0] - kth[1]) <= 1e-6
    return float(same.mean()), float(tied.mean())


def interleaved(engines: dict, repeats: int) -> dict:
    """Median seconds of each engine: one warm-up each, then rounds that call every engine once."""
    samples = {name: [] for name in engines}
    for fn in engines.values():
        fn()
    for _ in range(repeats):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="prompts (rows per layer)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per prompt (0: no limit)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated aliases")
    parser.add_argument("--poolings", default=",".join(POOLINGS), help="comma-separated poolings")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    parser.add_argument("--record", action="store_true", help="append the summary to bench/RESULTS.md")
    args = parser.parse_args()

    import faiss
    import torch

    from layerknn import _core

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    k, threads = args.k, args.threads
    kernel = os.environ.get("LAYERKNN_CPU_KERNEL", "auto")
    split = os.environ.get("LAYERKNN_CPU_SPLIT", "auto")
    print(f"CPU SIMD level {_core.simd_level()}, tile precisions {_core.tile_precisions()}, "
          f"LAYERKNN_CPU_KERNEL={kernel}, LAYERKNN_CPU_SPLIT={split}, {threads} threads", flush=True)
    rows = [
        "| model | pooling | L, n, d | layerknn s | FAISS s | torch s | vs FAISS | vs torch "
        "| tiles (layers) | candidates/row | same sets FAISS / torch (up to ties) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    models: dict = {}
    for alias in args.models.split(","):
        for pooling in args.poolings.split(","):
            x = cached_activations(alias, pooling, args.n, args.max_length or None, models)
            x = np.ascontiguousarray(x, dtype=np.float32)
            L, n, d = x.shape
            ours = layerknn_knn(x, k, threads)
            report = layer_reports(x, k, threads)
            same_f, tied_f = agreement(x, ours, faiss_knn(x, k))
            same_t, tied_t = agreement(x, ours, torch_knn(x, k))
            times = interleaved({"layerknn": lambda: layerknn_knn(x, k, threads),
                                 "faiss": lambda: faiss_knn(x, k),
                                 "torch": lambda: torch_knn(x, k)}, args.repeats)
            tables = {}
            for table, _ in report:
                tables[table] = tables.get(table, 0) + 1
            candidates = float(np.mean([c for _, c in report])) if report else float("nan")
            rows.append(
                f"| {alias} | {pooling} | {L}, {n}, {d} | {times['layerknn']:.3f} | {times['faiss']:.3f} "
                f"| {times['torch']:.3f} | {times['faiss'] / times['layerknn']:.2f}x "
                f"| {times['torch'] / times['layerknn']:.2f}x "
                f"| {', '.join(f'{t} ({c})' for t, c in tables.items())} | {candidates:.1f} "
                f"| {100 * same_f:.1f}% / {100 * same_t:.1f}% ({100 * tied_f:.1f}% / {100 * tied_t:.1f}%) |"
            )
            print(rows[-1], flush=True)
            if not args.no_layers:
                print("  layer | tiles | candidates/row | layerknn s | FAISS s", flush=True)
                for layer, (table, count) in enumerate(report):
                    xl = x[layer:layer + 1]
                    t = interleaved({"layerknn": lambda: layerknn_knn(xl, k, threads),
                                     "faiss": lambda: faiss_knn(xl, k)}, 1)
                    print(f"  {layer:5d} | {table} | {count:.1f} | {t['layerknn']:.4f} | {t['faiss']:.4f}",
                          flush=True)
    load = os.getloadavg()[0]
    title = (
        f"CPU k-NN on real activations ({DATASET}, n={args.n}, max_length={args.max_length or 'none'}), "
        f"cosine, k={k}: layerknn [{_core.simd_level()}, tiles {'/'.join(_core.tile_precisions())}, "
        f"LAYERKNN_CPU_KERNEL={kernel}, LAYERKNN_CPU_SPLIT={split}] vs FAISS IndexFlatIP vs torch bmm+topk"
        f"{isa_note()} (1-min load average at the end: {load:.1f})"
    )
    table = "\n".join(rows)
    if args.record:
        append_results(title, table, threads=threads)
    else:
        print(title + "\n\n" + table)


if __name__ == "__main__":
    main()
