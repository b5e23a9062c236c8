"""The ``layerknn`` command line: ``compare``, ``zoo`` and ``models``, a thin shell over the library.

Each command parses its options (defaults from :mod:`layerknn.options`, the same as the
library's), calls :func:`layerknn.compare` or :func:`layerknn.zoo`, and writes figures and
reports into the output folder as one set: the folder is built aside and swapped in, so an
interrupted run leaves the previous complete set.  ``layerknn compare`` with no model runs
the main job (:data:`layerknn.options.MAIN_JOB`).  Errors print one line and exit non-zero
(2: bad arguments or values; 3: a missing optional package, with the pip command; 1:
anything else; 130: interrupted); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from .options import DEFAULTS, MAIN_JOB
from .timings import Profile, timed

DEFAULT_OUT = "layerknn-out"


# ---------------------------------------------------------------------------------------------
# argument parsing


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="SPEC", action="append",
                   help=f"prompts: a dataset spec (default {MAIN_JOB['data']}); e.g. 'builtin:random-strings', "
                        "'prompts.txt', 'data.jsonl?field=text', 'table.csv?column=prompt', "
                        "'hf:owner/name[/config]?split=test&field=text', options n= and seed=; "
                        "zoo takes it repeatedly: one zoo per dataset, in a folder each under --out")
    p.add_argument("--n", type=int, default=None,
                   help=f"number of prompts (default {MAIN_JOB['n']} for builtin sets, all lines for files)")
    p.add_argument("--k", default=str(DEFAULTS.k), metavar="K",
                   help=f"neighbours per prompt (default {DEFAULTS.k}); compare also takes a list such as 1,5,10,20 "
                        "(one search at the largest; a comparison per k and a figure of the statistics against k)")
    p.add_argument("--measure", default=DEFAULTS.measure,
                   choices=("mutual", "jaccard", "rank", "cycle", "lcs", "edit"),
                   help=f"how two neighbour lists are compared (default {DEFAULTS.measure}: |N_A ∩ N_B| / k, the "
                        "paper's); see layerknn.overlap")
    p.add_argument("--pooling", default=DEFAULTS.pooling, choices=("last", "mean", "mean_no_bos"),
                   help=f"token pooling of activations (default {DEFAULTS.pooling})")
    p.add_argument("--max-length", type=int, default=None, metavar="T",
                   help="truncate prompts to T tokens (default: no limit; the main job uses "
                        f"{MAIN_JOB['max_length']}; 0 = no limit)")
    p.add_argument("--batch-size", default=DEFAULTS.batch_size, metavar="B",
                   help="extraction batch size (default auto)")
    p.add_argument("--cache-dir", default=None, metavar="D",
                   help="cache root for activations, neighbour lists and dequantised models "
                        "(default $LAYERKNN_CACHE_DIR or ~/.cache/layerknn); a folder or an fsspec URL such as "
                        "s3://bucket/layerknn (needs its fsspec backend, e.g. pip install s3fs)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--ray", nargs="?", const="ray", default=None, metavar="ADDRESS",
                   help="run each model (and the pair statistics) as Ray tasks: on the running cluster, else a new "
                        "local one; ADDRESS: 'auto' or ray://HOST:10001 (needs pip install layerknn[ray]; the cache "
                        "folder must be shared by every node)")
    p.add_argument("--bootstrap", type=int, default=DEFAULTS.bootstrap, metavar="B",
                   help=f"bootstrap resamples for confidence intervals (default {DEFAULTS.bootstrap}; 0 = none)")
    p.add_argument("--permutations", type=int, default=DEFAULTS.permutations, metavar="P",
                   help=f"shuffles for permutation p-values (default {DEFAULTS.permutations}; 0 = none)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the bootstrap/permutation draws")
    p.add_argument("--device", default=None, help="torch device for the models (default: automatic)")
    p.add_argument("--dtype", default=DEFAULTS.dtype, choices=("auto", "float32", "bfloat16", "float16"),
                   help=f"parameter dtype of models loaded by name (default {DEFAULTS.dtype}: exact and the same on "
                        "every machine). auto: bfloat16 on CPUs with native bfloat16 (faster; the report says which)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model folders to run their own Python code (off by default; never asked on stdin)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (layerknn's and transformers')")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--timings", action="store_true",
                   help="print where the time went, by phase (start-up and imports, model load, extraction, kNN, "
                        "overlap, statistics, figures, writing), wall and CPU seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerknn",
        description="Compare the layers of language models by the overlap of their k-nearest-neighbour sets.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    main_job = (f"{MAIN_JOB['models'][0]} vs {MAIN_JOB['models'][1]} on {MAIN_JOB['n']} prompts of "
                f"{MAIN_JOB['data']} cut to {MAIN_JOB['max_length']} tokens")
    pc = sub.add_parser(
        "compare", help="compare two models layer by layer",
        description=f"Compare every layer of model A with every layer of model B. With no models, runs the main "
                    f"job: {main_job}, writing to ./{DEFAULT_OUT}/. A model is an alias (see 'layerknn models'), "
                    "a HuggingFace model directory, a .gguf file, or an .npz file of activations (layerknn's own, "
                    "or a NumPy archive whose array 'values' has shape (layers, n, d)).")
    pc.add_argument("models", nargs="*", metavar="MODEL", help="model A and model B (default: the main job)")
    _common(pc)
    pc.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default ./{DEFAULT_OUT})")
    pz = sub.add_parser(
        "zoo", help="compare many models at once",
        description="Compute each model's neighbour lists once (cached), the similarity of all layers of all "
                    "models, a comparison per pair and the normalised-depth unit-square figure.")
    pz.add_argument("models", nargs="*", metavar="MODEL", help="two or more models (or --preset)")
    _common(pz)
    pz.add_argument("--out", default="layerknn-zoo", metavar="DIR", help="output folder (default ./layerknn-zoo)")
    pz.add_argument("--bins", type=int, default=20, help="unit-square bins per axis (default 20)")
    pz.add_argument("--preset", default=None, metavar="NAME",
                    help="a named run instead of MODEL...: 'paper' (the paper's model families by hub id, on the two "
                         "builtin datasets); prints the plan and stops at once if models are missing offline")
    pz.add_argument("--dry-run", action="store_true",
                    help="print what would run (models, datasets, n, k, memory and GPUs, models missing offline), "
                         "then exit")
    sub.add_parser("models", help="list the built-in model aliases",
                   description="List model aliases, whether their offline package is installed, and their sizes.")
    return parser


# ---------------------------------------------------------------------------------------------
# from arguments to library calls


def _model_arg(arg: str) -> Any:
    if arg.endswith(".npz") and Path(arg).is_file():
        from .sources import activations_file

        return activations_file(arg)
    return arg


def _texts(args, main_job: bool) -> list[str | None]:
    """The dataset specs to pass on, one per --data ([None] when every model is given as activations and no --data)."""
    if not args.data and not main_job and all(not isinstance(m, str) for m in args.model_objects):
        if args.n is not None:
            raise ValueError("--n needs --data when the models are activation files")
        return [None]
    return [_spec(data, args.n) for data in (args.data or [MAIN_JOB["data"]])]


def _spec(data: str, n: int | None) -> str:
    from .datasets import parse_spec

    spec = parse_spec(data)
    if n is None and "n" not in spec.options and spec.source.startswith("builtin:"):
        n = MAIN_JOB["n"]
    if n is not None:
        if n < 2:
            raise ValueError(f"--n must be >= 2, got {n}")
        spec = spec.with_options(n=n)
    return str(spec)


def _ks(value: str) -> list[int]:
    try:
        ks = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--k must be an integer or a comma-separated list of integers, got {value!r}") from None
    if not ks:
        raise ValueError(f"--k must name at least one k, got {value!r}")
    for k in ks:
        if k < 1:
            raise ValueError(f"--k must be >= 1, got {k}")
    return sorted(set(ks))


def _batch_size(value: str) -> Any:
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"--batch-size must be an integer or 'auto', got {value!r}") from None
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    return size


def _options(args, main_job: bool = False) -> dict:
    """Library keyword arguments from the parsed command line."""
    from .cache import Cache

    if args.cache_dir:  # one cache root (a folder or an fsspec URL): dequantised models live under it too
        from .store import is_url

        root = args.cache_dir if is_url(args.cache_dir) else str(Path(args.cache_dir).expanduser())
        os.environ["LAYERKNN_CACHE_DIR"] = root
    if args.max_length is not None and args.max_length < 0:
        raise ValueError(f"--max-length must be >= 0, got {args.max_length}")
    max_length = args.max_length if args.max_length is not None else (MAIN_JOB["max_length"] if main_job else None)
    return {
        "measure": args.measure, "pooling": args.pooling, "bootstrap": args.bootstrap,
        "permutations": args.permutations,
        "seed": args.seed, "device": args.device, "dtype": args.dtype, "trust_remote_code": args.trust_remote_code,
        "max_length": max_length or None, "batch_size": _batch_size(args.batch_size),
        "cache": False if args.no_cache else Cache(),
        "progress": not args.no_progress,
        "executor": _executor(args.ray),
    }


def _executor(address: str | None) -> str:
    """``--ray`` absent: local; bare: ``"ray"``; with an address: that address (``ray:`` added to host:port)."""
    if address is None:
        return DEFAULTS.executor
    if address in ("ray", "auto") or address.startswith("ray://"):
        return address
    return f"ray:{address}"


@contextlib.contextmanager
def _no_progress_bars(silence: bool) -> Iterator[None]:
    """--no-progress: hide every bar of the run, including transformers' and the hub's own.

    Some of transformers' bars (GGUF dequantisation, weight loading) call tqdm directly, outside
    its progress-bar switch, so tqdm itself defaults to ``disable=True`` for the duration of the
    command; the previous state is restored afterwards.
    """
    if not silence:
        yield
        return
    from tqdm import std

    original = std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = functools.wraps(original)(quiet)
    hf_enabled = None
    if "transformers" in sys.modules:  # never imported for it: the tqdm switch covers its bars too
        from transformers.utils import logging as hf_logging

        hf_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        std.tqdm.__init__ = original
        if hf_enabled:
            hf_logging.enable_progress_bar()


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (wall time hides a busy machine)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------
# commands


def _write_comparison(comp, folder: Path, start: float) -> str:
    """heatmap.png, depth.png, comparison.npz, report.json, summary.txt of one comparison; returns the summary."""
    seconds = comp.meta.setdefault("seconds", {})
    with timed(None, "", "summary + verdict"):
        summary = comp.summary()
    with timed(seconds, "figures"):
        comp.plot(folder / "heatmap.png")
        comp.plot_depth(folder / "depth.png")
    with timed(None, "", "writing"):
        comp.save(folder / "comparison.npz")
        seconds["total"] = round(time.perf_counter() - start, 3)
        seconds["process_cpu"] = round(_cpu_seconds(), 3)
        report = comp.to_dict()
        report["summary"] = summary
        (folder / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
        (folder / "summary.txt").write_text(summary + "\n")
    return summary


def cmd_compare(args) -> int:
    from .compare import compare
    from .report import jsonable
    from .store import check_output_folder, output_folder
    from .sweep import sweep_k

    start = time.perf_counter()
    main_job = not args.models
    if main_job:
        args.models = list(MAIN_JOB["models"])
    elif len(args.models) != 2:
        raise ValueError(f"compare needs exactly two models (or none for the main job), got {len(args.models)}")
    ks = _ks(args.k)
    check_output_folder(args.out)
    options = _options(args, main_job)
    args.model_objects = [_model_arg(m) for m in args.models]
    texts = _texts(args, main_job)
    if len(texts) > 1:
        raise ValueError(f"compare takes one --data, got {len(texts)}; layerknn zoo takes several")
    texts = texts[0]
    if len(ks) == 1:
        results = {ks[0]: compare(*args.model_objects, texts, k=ks[0], **options)}
    else:
        results = sweep_k(*args.model_objects, texts, ks=ks, **options)
    summaries = {}
    with output_folder(args.out, {"command": "compare", "k": ks}) as out:
        if len(ks) == 1:
            summaries[ks[0]] = _write_comparison(results[ks[0]], out, start)
        else:
            from .plot import k_sweep

            for k, comp in results.items():
                (out / f"k{k}").mkdir()
                summaries[k] = _write_comparison(comp, out / f"k{k}", start)
            k_sweep(results, out / "k_sweep.png")
            table = {k: {"depth_alignment": c.depth_alignment(**c.geometry()), "verdict": c.verdict()["verdict"],
                         "ci": (c.ci or {}).get("stats")} for k, c in results.items()}
            (out / "k_sweep.json").write_text(json.dumps(jsonable(table), indent=1, allow_nan=False))
    for k, summary in summaries.items():
        if len(ks) > 1:
            print(f"== k = {k}")
        print(summary)
        print()
    seconds = results[ks[-1]].meta["seconds"]
    phases = ", ".join(f"{key} {value:.1f} s" for key, value in seconds.items() if key != "total")
    what = "heatmap.png, depth.png, comparison.npz, report.json, summary.txt" + \
        ("" if len(ks) == 1 else " per k in k*/, k_sweep.png, k_sweep.json")
    print(f"wrote {args.out}/: {what} in {time.perf_counter() - start:.1f} s ({phases})")
    return 0


def cmd_zoo(args) -> int:
    from .cli_zoo import write_zoos
    from .store import check_output_folder
    from .zoos import zoos

    start = time.perf_counter()
    if args.preset is not None:
        from .presets import get_preset

        if args.models:
            raise ValueError(f"give models or --preset, not both (got {len(args.models)} models and --preset)")
        preset = get_preset(args.preset)
        args.models, args.data = [m.repo for m in preset.models], args.data or list(preset.datasets)
        args.n = args.n if args.n is not None else preset.n
    if len(args.models) < 2:
        raise ValueError(f"zoo needs at least two models, got {len(args.models)}")
    check_output_folder(args.out)
    (k,) = _ks(args.k) if "," not in args.k else (None,)
    if k is None:
        raise ValueError(f"--k must be one integer for zoo, got {args.k!r}")
    options = _options(args)
    args.model_objects = [_model_arg(m) for m in args.models]
    specs = _texts(args, False)
    if args.preset is not None or args.dry_run:
        from .presets import require_available, show_plan

        missing = show_plan(args.model_objects, specs, k=k, dtype=args.dtype, device=args.device,
                            title=f"preset {args.preset}" if args.preset else "zoo")
        if args.dry_run:
            return 0
        require_available(missing)
    found = zoos(args.model_objects, specs, k=k, **options)
    write_zoos(found, args.out, args.bins, start)
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
_FLAGS = ("k", "n", "bootstrap", "permutations", "seed", "max_length", "batch_size", "dtype", "pooling")


def _as_cli_message(exc: BaseException) -> str:
    """One line; a library message about an option names the command-line flag (``k`` -> ``--k``)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    match = re.match(r"^(\w+) must\b", text)
    if match and match.group(1) in _FLAGS:
        text = "--" + match.group(1).replace("_", "-") + text[len(match.group(1)):]
    return text


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
    profile = Profile() if getattr(args, "timings", False) else contextlib.nullcontext()
    try:
        with profile, _no_progress_bars(getattr(args, "no_progress", False)):
            code = _dispatch(args, debug)
    finally:
        warnings.formatwarning = original_format
    if isinstance(profile, Profile):
        print(f"timings (this process, {os.cpu_count()} CPUs):\n{profile.table()}")
    return code


def _dispatch(args, debug: bool) -> int:
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("layerknn: interrupted (finished extraction batches and results are cached; rerun to resume; "
              "the output folder was left as it was)", file=sys.stderr, flush=True)
        return 130
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if debug:
            raise
        print(f"layerknn: error: {_as_cli_message(exc)}", file=sys.stderr, flush=True)
        return 2
    except ImportError as exc:
        if debug:
            raise
        print(f"layerknn: error: {_as_cli_message(exc)}", file=sys.stderr, flush=True)
        return 3
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback with --debug
        if debug:
            raise
        print(f"layerknn: error: {type(exc).__name__}: {_as_cli_message(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
