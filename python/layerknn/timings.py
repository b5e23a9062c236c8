"""Where a run's time goes: nested phases, first imports of packages, and a table of both.

The library records each phase it runs in a plain ``seconds`` dict (kept in ``report.json``);
:func:`timed` does that and, while a :class:`Profile` is active (``layerknn compare
--timings``), also records the phase as an interval.  Phases nest (``prepare`` holds
``load``, ``extraction`` and ``knn``); a first import of a package (``import torch`` in the
middle of ``extraction``) is an interval of its own, caught by wrapping
``builtins.__import__``.  Each moment of the run is charged to the innermost interval open at
that moment, so the exclusive times of all rows plus "python start-up" (process start to the
profile's start, read from ``/proc``) add up to the wall time exactly.

Examples
--------
>>> import time
>>> seconds = {}
>>> with Profile() as prof:
...     with timed(seconds, "work"):
...         time.sleep(0.01)
>>> seconds["work"] >= 0.01, [row[0] for row in prof.rows()]
(True, ['work', 'other (unphased)'])
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import threading
import time
from typing import Iterator

__all__ = ["Profile", "timed", "process_age", "format_table"]

_ACTIVE: list["Profile"] = []


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Profile:
    """Intervals of one run: ``with Profile() as prof: ...``; then :meth:`rows` or :meth:`table`."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.startup = None
        # open intervals: [name, wall start, cpu start, child wall, child cpu]
        self._stack: list[list] = []
        self.totals: dict[str, list[float]] = {}  # name -> [exclusive wall, exclusive cpu, count]
        self._import = builtins.__import__
        self._thread = threading.get_ident()  # other threads' imports and phases are not charged

    def __enter__(self) -> "Profile":
        self.startup = process_age()
        self.start = time.perf_counter()
        self._cpu0 = time.process_time()
        _ACTIVE.append(self)
        builtins.__import__ = self._timed_import
        return self

    def __exit__(self, *exc) -> None:
        builtins.__import__ = self._import
        _ACTIVE.remove(self)
        self.end = time.perf_counter()
        self._cpu1 = time.process_time()

    def open(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), time.process_time(), 0.0, 0.0])

    def close(self) -> None:
        name, wall0, cpu0, child_wall, child_cpu = self._stack.pop()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        row = self.totals.setdefault(name, [0.0, 0.0, 0])
        row[0] += wall - child_wall
        row[1] += cpu - child_cpu
        row[2] += 1
        if self._stack:
            self._stack[-1][3] += wall
            self._stack[-1][4] += cpu

    def _timed_import(self, name, globals=None, locals=None, fromlist=(), level=0):
        top = name.partition(".")[0]
        if level or not top or top in sys.modules or threading.get_ident() != self._thread:
            return self._import(name, globals, locals, fromlist, level)
        self.open(f"import {top}")
        try:
            return self._import(name, globals, locals, fromlist, level)
        finally:
            self.close()

    def rows(self) -> list[tuple[str, float, float]]:
        """(phase, exclusive wall s, exclusive CPU s) in order of first appearance; "other" is the rest."""
        rows, small = [], [0.0, 0.0]
        for name, (wall, cpu, _) in self.totals.items():
            if name.startswith("import ") and wall < 0.05:  # many small imports: one row
                small[0] += wall
                small[1] += cpu
            else:
                rows.append((name, wall, cpu))
        if small[0]:
            rows.append(("import (others, < 50 ms each)", small[0], small[1]))
        wall = self.end - self.start
        cpu = self._cpu1 - self._cpu0
        rows.append(("other (unphased)", max(0.0, wall - sum(r[1] for r in rows)),
                     max(0.0, cpu - sum(r[2] for r in rows))))
        return rows

    def table(self) -> str:
        """The profile as aligned text, wall-time total last."""
        return format_table(self.rows(), self.startup, self.end - self.start)


def format_table(rows, startup: float | None, wall: float) -> str:
    """Text table of (phase, wall, cpu) rows with python start-up first and the total last."""
    lines = [f"{'phase':<28}{'wall s':>9}{'CPU s':>9}"]
    if startup is not None:
        lines.append(f"{'python start-up + imports':<28}{startup:>9.2f}{'':>9}")
    lines += [f"{name:<28}{w:>9.2f}{c:>9.2f}" for name, w, c in rows]
    total = wall + (startup or 0.0)
    lines.append(f"{'total (process wall)':<28}{total:>9.2f}")
    return "\n".join(lines)


@contextlib.contextmanager
def timed(seconds: dict | None, key: str, phase: str | None = None) -> Iterator[None]:
    """Time a block into ``seconds[key]`` (rounded to ms; None: not kept) and the active profile as ``phase``."""
    prof = _ACTIVE[-1] if _ACTIVE and _ACTIVE[-1]._thread == threading.get_ident() else None
    if prof is not None:
        prof.open(phase or key)
    start = time.perf_counter()
    try:
        yield
    finally:
        if seconds is not None:
            seconds[key] = round(time.perf_counter() - start, 3)
        if prof is not None:
            prof.close()
