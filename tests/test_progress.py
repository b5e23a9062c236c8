"""Progress reporting from the engines: ``layerknn.knn(..., progress=...)`` and the CPU engine's
own layer counter (``_core.knn_cpu(..., progress=callable)``), on every available device."""

from __future__ import annotations


import numpy as np
import pytest

import layerknn
from conftest import on_device, to_numpy
from layerknn import _core


def recorder():
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def assert_rising_to(calls, total):
    assert calls, "progress was never called"
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(1 <= d <= total for d in done)
    assert calls[-1] == (total, total)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("L", [1, 2, 7])
def test_callable_sees_a_rising_count_ending_at_all_layers(device, rng, L, threads):
    x = rng.standard_normal((L, 230, 24)).astype(np.float32)
    calls, report = recorder()
    nbrs = layerknn.knn(on_device(x, device), 5, num_threads=threads, progress=report)
    assert_rising_to(calls, L)
    plain = layerknn.knn(on_device(x, device), 5, num_threads=threads)
    assert (to_numpy(nbrs.indices) == to_numpy(plain.indices)).all()
    assert (to_numpy(nbrs.scores) == to_numpy(plain.scores)).all()


def test_cross_form_and_single_layer_report_too(device, rng):
    x = rng.standard_normal((3, 40, 9)).astype(np.float32)
    y = rng.standard_normal((3, 70, 9)).astype(np.float32)
    calls, report = recorder()
    layerknn.knn(on_device(x, device), 4, y=on_device(y, device), progress=report)
    assert_rising_to(calls, 3)
    calls, report = recorder()
    layerknn.knn(on_device(x[0], device), 4, progress=report)
    assert calls == [(1, 1)]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_progress_bar_changes_nothing(rng, metric):
    x = rng.standard_normal((5, 300, 17)).astype(np.float32)
    with_bar = layerknn.knn(x, 6, metric=metric, progress=True)
    without = layerknn.knn(x, 6, metric=metric, progress=False)
    assert (with_bar.indices == without.indices).all()
    assert (with_bar.scores == without.scores).all()


def test_engine_reports_every_layer_from_its_own_schedule(rng):
    # Many layers over 2 workers: solo layers finish out of order, yet the count only rises.
    x = rng.standard_normal((11, 200, 8)).astype(np.float32)
    calls, report = recorder()
    indices, scores = _core.knn_cpu(x, None, 3, 1, True, 2, report)
    assert_rising_to(calls, 11)
    plain = _core.knn_cpu(x, None, 3, 1, True, 2)
    assert (indices == plain[0]).all() and (scores == plain[1]).all()


@pytest.mark.parametrize("bad", [1, 0.5, "yes", [1]])
def test_bad_progress_is_a_type_error_naming_it(bad):
    x = np.ones((2, 5, 3), dtype=np.float32)
    with pytest.raises(TypeError, match=r"progress must be True, False or a callable.*got "):
        layerknn.knn(x, 2, progress=bad)
    with pytest.raises(TypeError, match=r"progress must be None or a callable"):
        _core.knn_cpu(x, None, 2, 1, True, 1, bad)


def test_an_error_in_the_callback_stops_the_call_and_propagates(rng):
    x = rng.standard_normal((6, 300, 16)).astype(np.float32)

    def broken(done, total):
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        layerknn.knn(x, 5, progress=broken)
    # The engine is left in a usable state.
    calls, report = recorder()
    layerknn.knn(x, 5, progress=report)
    assert_rising_to(calls, 6)


def test_bad_rows_still_raise_value_error_with_progress(rng):
    x = rng.standard_normal((3, 50, 4)).astype(np.float32)
    x[1, 7, 2] = np.nan
    calls, report = recorder()
    with pytest.raises(ValueError, match=r"x contains NaN or Inf: layer 1, row 7"):
        layerknn.knn(x, 3, progress=report)
    assert all(d < 3 for d, _ in calls)
