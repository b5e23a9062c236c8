// CPU neighbour-overlap engine (see overlap_cpu.h). Step 1 copies the first k columns of every
// neighbour row, sorted and de-duplicated, into a compact [L, n, k] buffer with a per-row length.
// Step 2 runs one task per layer of A: for each layer of B and each prompt, a merge
// intersection of two short sorted rows (common/intersect.h, shared with the CUDA engine).
#include "cpu/overlap_cpu.h"

#include <algorithm>
#include <vector>

#include "common/intersect.h"
#include "cpu/parallel.h"

namespace layerknn::cpu {
namespace {

struct SortedRows {
  std::vector<int32_t> values;   // [L, n, k], row r holds lengths[r] sorted distinct values
  std::vector<uint16_t> lengths; // [L, n]
};

SortedRows sort_rows(const int32_t* rows, int64_t L, int64_t n, int width, int k, int threads,
                     const std::atomic<bool>& cancel) {
  SortedRows out;
  out.values.resize(static_cast<size_t>(L * n * k));
  out.lengths.resize(static_cast<size_t>(L * n));
  const int64_t total = L * n;
  const int64_t chunk = 4096;
  parallel_for((total + chunk - 1) / chunk, threads, cancel, [&](int64_t task, int) {
    const int64_t end = std::min(total, (task + 1) * chunk);
    for (int64_t r = task * chunk; r < end; ++r) {
      int32_t* dst = out.values.data() + r * k;
      std::copy(rows + r * width, rows + r * width + k, dst);
      std::sort(dst, dst + k);
      out.lengths[r] = static_cast<uint16_t>(std::unique(dst, dst + k) - dst);
    }
  });
  return out;
}

}  // namespace

void overlap(const OverlapProblem& p, double* mean, uint16_t* counts, int num_threads,
             const std::atomic<bool>& cancel) {
  const int k = p.k;
  const SortedRows a = sort_rows(p.a, p.La, p.n, p.ka, k, num_threads, cancel);
  const SortedRows b = sort_rows(p.b, p.Lb, p.n, p.kb, k, num_threads, cancel);
  const double inv = 1.0 / (static_cast<double>(k) * static_cast<double>(p.n));
  parallel_for(p.La, num_threads, cancel, [&](int64_t la, int) {
    for (int64_t lb = 0; lb < p.Lb; ++lb) {
      if (cancel.load(std::memory_order_relaxed)) return;
      const int32_t* ra = a.values.data() + la * p.n * k;
      const int32_t* rb = b.values.data() + lb * p.n * k;
      const uint16_t* na = a.lengths.data() + la * p.n;
      const uint16_t* nb = b.lengths.data() + lb * p.n;
      uint16_t* row_counts = counts ? counts + (la * p.Lb + lb) * p.n : nullptr;
      int64_t total = 0;
      for (int64_t i = 0; i < p.n; ++i) {
        const int c = sorted_intersection_size(ra + i * k, na[i], rb + i * k, nb[i]);
        total += c;
        if (row_counts) row_counts[i] = static_cast<uint16_t>(c);
      }
      mean[la * p.Lb + lb] = static_cast<double>(total) * inv;
    }
  });
}

}  // namespace layerknn::cpu
