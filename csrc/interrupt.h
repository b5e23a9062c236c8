// Runs a long native computation without the GIL while keeping Ctrl-C working. The work runs on
// a helper thread; the calling thread wakes every few milliseconds, briefly takes the GIL and
// asks Python whether a signal is pending. If one is, it raises the shared cancel flag, waits for
// the work to wind down, and re-raises the Python exception (KeyboardInterrupt) to the caller.
// An optional `poll` runs on each wake and once after the work finishes, with the GIL held (a
// progress callback); if it raises, the work is cancelled the same way and its error re-raised.
#pragma once
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <future>
#include <utility>

namespace layerknn {

struct NoPoll {
  void operator()() const {}
};

template <class Work, class Poll = NoPoll>
void run_interruptible(Work&& work, Poll&& poll = Poll()) {
  namespace py = pybind11;
  std::atomic<bool> cancel{false};
  bool interrupted = false;
  std::exception_ptr poll_error;  // an exception from poll, re-raised after the work stops
  {
    py::gil_scoped_release release;
    auto done = std::async(std::launch::async, [&] { work(cancel); });
    while (done.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
      py::gil_scoped_acquire acquire;
      if (PyErr_CheckSignals() != 0) {
        cancel.store(true);
        interrupted = true;
        break;
      }
      try {
        poll();
      } catch (...) {
        poll_error = std::current_exception();
        cancel.store(true);
        break;
      }
    }
    if (interrupted) {
      // The pending Python error belongs to this thread state; keep it while the work stops.
      PyObject *type, *value, *trace;
      {
        py::gil_scoped_acquire acquire;
        PyErr_Fetch(&type, &value, &trace);
      }
      try {
        done.get();
      } catch (...) {
      }
      py::gil_scoped_acquire acquire;
      PyErr_Restore(type, value, trace);
    } else if (poll_error) {
      try {
        done.get();
      } catch (...) {
      }
    } else {
      done.get();  // re-throws a C++ exception from the work, if any
    }
  }
  if (interrupted) throw py::error_already_set();
  if (poll_error) std::rethrow_exception(poll_error);
  poll();  // the final state, after the work completed
}

}  // namespace layerknn
