// Minimal fork-join parallelism for the CPU engine, built on std::thread rather than OpenMP so
// that it never clashes with (or oversubscribes next to) the OpenMP runtime that torch loads.
// parallel_for hands out task indices dynamically from an atomic counter and stops handing
// them out as soon as the shared cancel flag is raised (Ctrl-C in Python, see interrupt.h).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace layerknn::cpu {

// Number of worker threads to use when the caller passes num_threads <= 0.
inline int default_num_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs body(task, worker) for task in [0, num_tasks) on up to num_threads threads (the calling
// thread is one of them). `worker` is in [0, threads_used) and lets bodies use per-thread
// scratch. Exceptions from a body are re-thrown on the calling thread after all workers join.
template <class Body>
void parallel_for(int64_t num_tasks, int num_threads, const std::atomic<bool>& cancel, Body&& body) {
  if (num_tasks <= 0) return;
  if (num_threads <= 0) num_threads = default_num_threads();
  const int workers = static_cast<int>(std::min<int64_t>(num_threads, num_tasks));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](int worker) {
    try {
      for (int64_t t = next.fetch_add(1); t < num_tasks; t = next.fetch_add(1)) {
        if (cancel.load(std::memory_order_relaxed)) return;
        body(t, worker);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
  run(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace layerknn::cpu
