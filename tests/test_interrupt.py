"""Ctrl-C during a long native call raises KeyboardInterrupt promptly instead of being ignored
until the call ends (the engines poll a cancel flag; see csrc/interrupt.h)."""

from __future__ import annotations

import _thread
import threading

import numpy as np
import pytest

import layerknn


def test_keyboard_interrupt_stops_a_long_knn():
    # About 2e12 flops (several seconds even for a fast engine on many cores), so finishing
    # without an exception means Ctrl-C was ignored until the end of the native call.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 16000, 128), dtype=np.float32)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            layerknn.knn(x, 10)
    finally:
        timer.cancel()
