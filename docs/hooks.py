"""MkDocs hooks of the layerknn docs: the pages generated from the code at build time.

- ``cli.md``: every ``layerknn`` parser's ``format_help()`` (the top-level parser and each
  subcommand), written on every build, so the CLI reference is the ``--help`` text itself.
- ``gallery/*.png`` and ``gallery/summary.txt``: ``docs/gallery.py`` run in a subprocess on the
  offline models, whenever the imported ``layerknn`` package (its sources and compiled engine)
  or the gallery script changed since the figures were last made (a SHA-256 stamp says which).

Both go to ``$LAYERKNN_DOCS_BUILD`` (default ``build/docs`` at the repository root, git-ignored),
never into ``docs/``; they join the site through ``on_files``.  The gallery's activation and
neighbour cache lives there too (``build/docs/cache``), so a rebuild after a code change
recomputes the figures without running the models again when the extraction is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CLI_WIDTH = 100  # columns of the --help text on the CLI page (argparse reads $COLUMNS)


def build_dir() -> Path:
    """Folder of everything generated (pages, figures, the gallery's cache)."""
    return Path(os.environ.get("LAYERKNN_DOCS_BUILD", ROOT / "build" / "docs")).resolve()


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def cli_page() -> str:
    """Markdown of ``layerknn --help`` and ``layerknn COMMAND --help`` for every command."""
    import argparse

    from layerknn import cli

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(CLI_WIDTH)
    try:
        parser = cli.build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        parts = ["# CLI reference", "",
                 "Generated at build time from the parsers in `layerknn.cli` (`build_parser()`): each block is",
                 "exactly what `--help` prints. Every option's default comes from `layerknn.DEFAULTS`, the",
                 "same object the Python functions take their defaults from.", "",
                 "## `layerknn`", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, sub in commands.items():
            parts += [f"## `layerknn {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts)


def gallery_stamp() -> str:
    """SHA-256 over the imported package's files and the gallery script: what the figures depend on."""
    import layerknn

    digest = hashlib.sha256()
    package = Path(layerknn.__file__).resolve().parent
    sources = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sources + [ROOT / "docs" / "gallery.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def make_gallery(out: Path) -> None:
    """Run ``docs/gallery.py`` into ``out`` unless its stamp is current; the stamp is written last."""
    stamp = gallery_stamp()
    stamp_file = out / "stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    stamp_file.unlink(missing_ok=True)
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1",
               MPLBACKEND="Agg")
    cmd = [sys.executable, str(ROOT / "docs" / "gallery.py"), str(out), "--cache-dir", str(out.parent / "cache")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise PluginError(f"docs/gallery.py failed (exit {done.returncode}); the figure gallery needs the offline "
                          f"models (pip install 'layerknn[models]'):\n{tail}")
    print(done.stdout.strip(), file=sys.stderr)
    stamp_file.write_text(stamp)


def on_config(config):
    """Let ``--8<--`` snippets also read generated files (``gallery/summary.txt``)."""
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = list(snippets.get("base_path", ["."])) + [str(build_dir())]
    return config


def on_pre_build(config) -> None:
    try:
        import layerknn  # noqa: F401
    except ImportError as exc:
        raise PluginError("the docs need layerknn importable: pip install '.[docs]' (or PYTHONPATH=python "
                          f"with the compiled engine in python/layerknn): {exc}") from exc
    out = build_dir()
    _write_if_changed(out / "pages" / "cli.md", cli_page())
    make_gallery(out / "gallery")


def on_files(files: Files, config) -> Files:
    """Add the generated CLI page and gallery figures to the site."""
    out = build_dir()
    generated = [("cli.md", out / "pages")]
    generated += [(f"gallery/{p.name}", out) for p in sorted((out / "gallery").glob("*.png"))]
    for src_uri, src_dir in generated:
        files.append(File(src_uri, src_dir=str(src_dir), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files
