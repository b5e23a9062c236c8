"""Ctrl-C during a long native call raises KeyboardInterrupt promptly instead of being ignored
until the call ends (the engines poll a cancel flag; see csrc/interrupt.h).

An ignored interrupt would still surface as KeyboardInterrupt once the call returned, so the test
bounds the time from the signal to the exception by a fraction of the work still left at that
point, measured on this machine: an engine that ran its remaining layers to completion fails."""

from __future__ import annotations

import _thread
import math
import signal
import threading
import time

import numpy as np
import pytest

import layerknn


def test_keyboard_interrupt_stops_a_long_knn():
    rng = np.random.default_rng(0)
    layer = rng.standard_normal((1, 8000, 64), dtype=np.float32)
    pair = np.ascontiguousarray(np.broadcast_to(layer, (2, *layer.shape[1:])))
    start = time.perf_counter()
    layerknn.knn(pair, 10)
    per_layer = (time.perf_counter() - start) / 2
    L = int(min(200, max(20, math.ceil(6.0 / per_layer))))  # >= ~6 s of work in all
    x = np.ascontiguousarray(np.broadcast_to(layer, (L, *layer.shape[1:])))

    fired: list[tuple[float, int]] = []  # (when, layers done by then)
    timers: list[threading.Timer] = []
    seen: list[int] = []

    def interrupt():
        fired.append((time.perf_counter(), seen[-1]))
        _thread.interrupt_main()

    def progress(done, total):
        # First report: the engine is running in native code; signal 50 ms later, mid-layer.
        seen.append(done)
        if not timers:
            timers.append(threading.Timer(0.05, interrupt))
            timers[0].start()

    # What a terminal's Ctrl-C meets in a plain Python process. (In the full suite something
    # earlier leaves another SIGINT handler installed, under which interrupt_main does nothing.)
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        began = time.perf_counter()
        try:
            layerknn.knn(x, 10, progress=progress)
        except KeyboardInterrupt:
            pass
        else:
            pytest.fail(f"no KeyboardInterrupt: {L} layers (measured ~{per_layer * 1e3:.0f} ms each) took "
                        f"{time.perf_counter() - began:.2f} s; {len(seen)} progress reports, the first "
                        f"{seen[:1]}; the signal fired: {bool(fired)}; SIGINT handler before the test: "
                        f"{previous_handler!r}")
        stopped = time.perf_counter()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        for timer in timers:
            timer.cancel()
    assert fired, "the interrupt never fired: the call ended first"
    when, done = fired[0]
    left = (L - done) * per_layer  # work still to do when the signal came
    waited = stopped - when
    assert max(seen) < L
    assert waited < max(0.5, 0.2 * left), (
        f"KeyboardInterrupt came {waited:.2f} s after Ctrl-C, with ~{left:.1f} s of work left "
        f"({L} layers of ~{per_layer * 1e3:.0f} ms): the engine ignored the cancel flag"
    )
