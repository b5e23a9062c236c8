"""The ``layerknn`` command line: ``compare``, ``zoo`` and ``models``.

``layerknn compare`` with no model arguments runs the embedded default job
(smollm2-135m vs gemma3-270m on 1024 standard-library docstring paragraphs, k = 10) and
writes its figures and report to ``./layerknn-out/``.  Activations and neighbour lists
are cached on disk, so a second run only reloads them.  Errors print one line and exit
non-zero (2: bad arguments or values; 3: a missing optional package, with the pip command;
1: anything else; 130: interrupted); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT_DATA = "builtin:stdlib-docs"
DEFAULT_N = 1024
DEFAULT_MAX_LENGTH = 64
DEFAULT_OUT = "layerknn-out"
DEFAULT_DTYPE = "auto"


class CLIError(ValueError):
    """A usage problem reported as one line with exit code 2."""


# ---------------------------------------------------------------------------------------------
# argument parsing


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="SPEC",
                   help=f"prompts: a dataset spec (default {DEFAULT_DATA}); e.g. 'builtin:random-strings', "
                        "'prompts.txt', 'data.jsonl?field=text', 'table.csv?column=prompt', options n= and seed=")
    p.add_argument("--n", type=int, default=None,
                   help=f"number of prompts (default {DEFAULT_N} for builtin sets, all lines for files)")
    p.add_argument("--k", type=int, default=10, help="neighbours per prompt (default 10)")
    p.add_argument("--pooling", default="last", help="token pooling of activations (default last)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, metavar="T",
                   help=f"truncate prompts to T tokens (default {DEFAULT_MAX_LENGTH}; 0 = no limit)")
    p.add_argument("--batch-size", default="auto", metavar="B", help="extraction batch size (default auto)")
    p.add_argument("--cache-dir", default=None, metavar="D",
                   help="directory of the activation/neighbour cache (default $LAYERKNN_CACHE_DIR or "
                        "~/.cache/layerknn; dequantised GGUF models follow $LAYERKNN_CACHE_DIR)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for confidence intervals (default 1000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap/permutation draws (default 0)")
    p.add_argument("--device", default=None, help="torch device for the models (default: automatic)")
    p.add_argument("--dtype", default=DEFAULT_DTYPE, choices=("auto", "float32", "bfloat16", "float16"),
                   help="parameter dtype of models loaded by name. auto (default): bfloat16 when running on a "
                        "CPU with native bfloat16 support (AVX512-BF16/AMX; ~1.8x faster, matmuls accumulate "
                        "in float32), else float32")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerknn",
        description="Compare the layers of language models by the overlap of their k-nearest-neighbour sets.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    pc = sub.add_parser(
        "compare", help="compare two models layer by layer",
        description="Compare every layer of model A with every layer of model B. With no models given, runs "
                    f"the default job: {DEFAULT_MODELS[0]} vs {DEFAULT_MODELS[1]} on {DEFAULT_N} prompts of "
                    f"{DEFAULT_DATA}, writing to ./{DEFAULT_OUT}/. A model is an alias (see 'layerknn models'), "
                    "a HuggingFace model directory, or an .npz file of activations (array 'values' of shape "
                    "(layers, n, d)).")
    pc.add_argument("models", nargs="*", metavar="MODEL", help="model A and model B (default: the default job)")
    _common(pc)
    pc.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default ./{DEFAULT_OUT})")
    pc.add_argument("--permutations", type=int, default=200, metavar="P",
                    help="shuffles for per-cell permutation p-values against chance (default 200; 0 = none)")
    pc.add_argument("--activations", nargs=2, metavar=("A.npz", "B.npz"), default=None, help=argparse.SUPPRESS)

    pz = sub.add_parser(
        "zoo", help="compare many models at once",
        description="Compute each model's neighbour lists once (cached), the similarity of all layers of all "
                    "models, a comparison per pair and the normalised-depth unit-square figure.")
    pz.add_argument("models", nargs="+", metavar="MODEL", help="two or more models")
    _common(pz)
    pz.add_argument("--out", default="layerknn-zoo", metavar="DIR", help="output directory (default ./layerknn-zoo)")
    pz.add_argument("--bins", type=int, default=20, help="unit-square bins per axis (default 20)")

    sub.add_parser("models", help="list the built-in model aliases",
                   description="List model aliases, whether their offline package is installed, and their sizes.")
    return parser


# ---------------------------------------------------------------------------------------------
# helpers


def _load_activation_file(path: str):
    """Activations from an .npz: one written by ``Activations.save`` or a plain array ``values``."""
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"activations file not found: {path}")
    try:
        with np.load(file, allow_pickle=False) as data:
            names = list(data.files)
            if "metadata" in names:  # layerknn.extract.Activations.save format
                values = name = None
            else:
                key = "values" if "values" in names else (names[0] if len(names) == 1 else None)
                if key is None:
                    raise CLIError(f"{path}: expected an array named 'values', found {names}")
                values = data[key]
                name = str(data["model_name"]) if "model_name" in names else file.stem
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"cannot read activations from {path}: {exc}") from None
    if values is None:
        from .extract import Activations

        return Activations.load(file)
    if values.ndim != 3:
        raise CLIError(f"{path}: activations must have shape (layers, n, d), got {values.shape}")
    return _NamedValues(values.astype(np.float32, copy=False), name)


class _NamedValues:
    """Minimal Activations-like wrapper for arrays read from files."""

    def __init__(self, values, name):
        self.values = values
        self.model_name = name
        self.num_layers = values.shape[0] - 1
        self.hidden_size = values.shape[2]
        self.fingerprint = None
        self.pooling = None


def _model_arg(arg: str):
    if arg.endswith(".npz") and Path(arg).is_file():
        return _load_activation_file(arg)
    return arg


def _texts(args, models: Sequence[Any]):
    from .compare import resolve_texts
    from .datasets import parse_spec

    needs_texts = any(isinstance(m, str) for m in models)
    spec = parse_spec(args.data or DEFAULT_DATA)
    n = args.n
    if n is None and "n" not in spec.options and spec.source.startswith("builtin:"):
        n = DEFAULT_N
    if n is not None:
        if n < 2:
            raise CLIError(f"--n must be >= 2, got {n}")
        spec = spec.with_options(n=n)
    if not needs_texts:
        return None, (str(spec) if args.data else None)
    return resolve_texts(str(spec))


def _extract_options(args) -> dict:
    opts: dict[str, Any] = {}
    if args.max_length is not None and args.max_length > 0:
        opts["max_length"] = args.max_length
    if args.max_length is not None and args.max_length < 0:
        raise CLIError(f"--max-length must be >= 0, got {args.max_length}")
    if args.batch_size != "auto":
        try:
            opts["batch_size"] = int(args.batch_size)
        except ValueError:
            raise CLIError(f"--batch-size must be an integer or 'auto', got {args.batch_size!r}") from None
        if opts["batch_size"] < 1:
            raise CLIError(f"--batch-size must be >= 1, got {opts['batch_size']}")
    else:
        opts["batch_size"] = "auto"
    dtype = _resolve_dtype(getattr(args, "dtype", None), getattr(args, "device", None))
    if dtype is not None:
        import torch

        opts["dtype"] = getattr(torch, dtype)
    return opts


def _resolve_dtype(dtype: str | None, device: str | None) -> str | None:
    """"auto" -> "bfloat16" on a CPU with native bfloat16 arithmetic, else "float32"."""
    if dtype != "auto":
        return dtype
    if device is not None and not str(device).startswith("cpu"):
        return "float32"
    import torch

    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        native = bool((check and check()) or (amx and amx()))
    except Exception:  # noqa: BLE001 - capability probing must never break a run
        native = False
    return "bfloat16" if native else "float32"


def _cache(args):
    from .cache import Cache

    if args.no_cache:
        return None
    return Cache(args.cache_dir) if args.cache_dir else Cache()


def _check_counts(args) -> None:
    if args.k < 1:
        raise CLIError(f"--k must be >= 1, got {args.k}")
    if args.bootstrap < 0:
        raise CLIError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if getattr(args, "permutations", 0) < 0:
        raise CLIError(f"--permutations must be >= 0, got {args.permutations}")


def _neighbors_for(models, text_list, args, cache, timings, k_max):
    from .compare import model_neighbors

    sides = []
    for label, model in models:
        t0 = time.perf_counter()
        side = model_neighbors(model, text_list, k_max=k_max, pooling=args.pooling, cache=cache,
                               progress=not args.no_progress, device=args.device, label=label,
                               **_extract_options(args))
        timings[f"neighbours {side.name}"] = round(time.perf_counter() - t0, 3)
        sides.append(side)
    return sides


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (wall time hides a busy machine)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------------
# commands


def cmd_compare(args) -> int:
    from .compare import comparison_from_neighbors

    start = time.perf_counter()
    _check_counts(args)
    if args.activations:
        if args.models:
            raise CLIError("give either MODEL arguments or --activations, not both")
        models = [_load_activation_file(p) for p in args.activations]
    elif not args.models:
        models = list(DEFAULT_MODELS)
    elif len(args.models) != 2:
        raise CLIError(f"compare needs exactly two models (or none for the default job), got {len(args.models)}")
    else:
        models = [_model_arg(m) for m in args.models]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    text_list, dataset = _texts(args, models)
    timings["texts"] = round(time.perf_counter() - t0, 3)
    n = len(text_list) if text_list is not None else None
    sizes = {getattr(m, "values", None).shape[1] for m in models if hasattr(m, "values")}
    if n is None:
        if len(sizes) != 1:
            raise CLIError(f"the two activation files must hold the same prompts, got n = {sorted(sizes)}")
        n = sizes.pop()
    elif sizes and sizes != {n}:
        raise CLIError(f"activation files hold n = {sorted(sizes)} prompts but the data has n = {n}")
    if args.k > n - 1:
        raise CLIError(f"--k must be in [1, n-1] = [1, {n - 1}] for n = {n} prompts, got {args.k}")
    k_max = min(args.k + 1, n - 1)
    cache = _cache(args)
    side_a, side_b = _neighbors_for([("A", models[0]), ("B", models[1])], text_list, args, cache, timings, k_max)
    if side_a.n != side_b.n:
        raise CLIError(f"the two models must see the same prompts: A has n={side_a.n}, B has n={side_b.n}")
    t0 = time.perf_counter()
    comp = comparison_from_neighbors(side_a, side_b, k=args.k, dataset=dataset, pooling=args.pooling,
                                     bootstrap=args.bootstrap, permutations=args.permutations, seed=args.seed,
                                     progress=not args.no_progress)
    timings["overlap + statistics"] = round(time.perf_counter() - t0, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    comp.plot(out / "heatmap.png")
    comp.plot_depth(out / "depth.png")
    timings["figures"] = round(time.perf_counter() - t0, 3)
    comp.save(out / "comparison.npz")
    timings["total"] = round(time.perf_counter() - start, 3)
    timings["process_cpu"] = round(_cpu_seconds(), 3)
    report = comp.to_dict()
    report["timings_s"] = timings
    report["settings"] = {key: value for key, value in vars(args).items() if key not in ("func",)}
    report["summary"] = comp.summary()
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out / "summary.txt").write_text(comp.summary() + "\n")
    print(comp.summary())
    print(f"\nwrote {out / 'heatmap.png'}, {out / 'depth.png'}, {out / 'comparison.npz'}, {out / 'report.json'} "
          f"in {timings['total']:.1f} s (CPU {timings['process_cpu']:.1f} s)")
    return 0


def cmd_zoo(args) -> int:
    from .zoo import zoo

    start = time.perf_counter()
    _check_counts(args)
    if len(args.models) < 2:
        raise CLIError(f"zoo needs at least two models, got {len(args.models)}")
    models = [_model_arg(m) for m in args.models]
    text_list, dataset = _texts(args, models)
    z = zoo(models, text_list, k=args.k, pooling=args.pooling, cache=_cache(args) or False,
            bootstrap=args.bootstrap, seed=args.seed, progress=not args.no_progress, device=args.device,
            **_extract_options(args))
    z.dataset = dataset
    for c in z.pairs.values():
        c.dataset = dataset
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    z.plot_matrix(out / "matrix.png")
    z.plot_unit_square(out / "unit_square.png", bins=args.bins)
    for (i, j), c in z.pairs.items():
        c.plot(out / f"heatmap-{i}-{j}.png")
    z.save(out / "zoo.npz")
    report = z.to_dict()
    report["timings_s"] = {"total": round(time.perf_counter() - start, 3)}
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    for (i, j), c in z.pairs.items():
        print(f"== {z.names[i]} vs {z.names[j]}")
        print(c.summary())
        print()
    print(f"wrote {out}/matrix.png, unit_square.png, heatmap-*.png, zoo.npz, report.json "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_models(args) -> int:
    from .models import list_aliases

    rows = list_aliases()
    header = ("alias", "installed", "architecture", "layers", "hidden", "package", "description")
    table = [header] + [(r["alias"], "yes" if r["installed"] else "no", str(r["architecture"]),
                         str(r["num_layers"]), str(r["hidden_size"]), str(r["package"]),
                         str(r.get("description", ""))) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    missing = [r for r in rows if not r["installed"]]
    if missing:
        print("\ninstall missing packages with:")
        for r in missing:
            print(f"  {r['pip']}")
    return 0


COMMANDS = {"compare": cmd_compare, "zoo": cmd_zoo, "models": cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``layerknn`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    original_format = warnings.formatwarning
    if not debug:  # warnings as one line each, without the source line they came from
        warnings.formatwarning = lambda message, category, *rest, **kw: f"layerknn: warning: {message}\n"
    try:
        return _dispatch(args, debug)
    finally:
        warnings.formatwarning = original_format


def _dispatch(args, debug: bool) -> int:
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        _log("layerknn: interrupted (cached results so far are kept; rerun to resume)")
        return 130
    except (ValueError, TypeError) as exc:
        if debug:
            raise
        _log(f"layerknn: error: {_one_line(exc)}")
        return 2
    except ImportError as exc:
        if debug:
            raise
        _log(f"layerknn: error: {_one_line(exc)}")
        return 3
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback with --debug
        if debug:
            raise
        _log(f"layerknn: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
