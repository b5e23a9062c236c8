// Runs a long native computation without the GIL while keeping Ctrl-C working. The work runs on
// a helper thread; the calling thread wakes every few milliseconds, briefly takes the GIL and
// asks Python whether a signal is pending. If one is, it raises the shared cancel flag, waits for
// the work to wind down, and re-raises the Python exception (KeyboardInterrupt) to the caller.
#pragma once
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <future>
#include <utility>

namespace layerknn {

template <class Work>
void run_interruptible(Work&& work) {
  namespace py = pybind11;
  std::atomic<bool> cancel{false};
  bool interrupted = false;
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
    } else {
      done.get();  // re-throws a C++ exception from the work, if any
    }
  }
  if (interrupted) throw py::error_already_set();
}

}  // namespace layerknn
