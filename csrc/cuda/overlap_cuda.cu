// CUDA neighbour-overlap engine (contract in knn_cuda.h), with the CPU engine's exact semantics
// (csrc/cpu/overlap_cpu.cpp): the first k columns of every neighbour row are sorted and
// de-duplicated once by a pre-pass (each row staged in shared memory) into a compact [L, n, k] buffer (common/intersect.h), then one
// launch intersects all La x Lb layer pairs for every prompt (grid: prompt block x layer of A x
// group of layers of B). Sums are integers (shared-memory then global 64-bit atomics, so the
// result is deterministic) and each mean is formed once as total * (1 / (k n)), as on the CPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/cuda_check.cuh"
#include "cuda/knn_cuda.h"
#include "cuda/launch.cuh"
#include "cuda/limits.h"
#include "cuda/overlap_kernels.cuh"

namespace layerknn::cuda {
namespace detail {
namespace {

constexpr int64_t kMaxGridY = 65535;

void launch_sort_rows(const int32_t* src, int64_t rows, int width, int k, int32_t* dst,
                      uint16_t* lengths, cudaStream_t stream) {
  if (rows == 0) return;
  const int staged_threads = sort_rows_threads(k);
  const int threads = staged_threads > 0 ? staged_threads : 256;
  const size_t stage_bytes = staged_threads > 0 ? sizeof(int32_t) * static_cast<size_t>(k) * threads : 0;
  launch_kernel(sort_rows_kernel,
                dim3(limits::grid_extent((rows + threads - 1) / threads, limits::kMaxGridX, "x")),
                dim3(threads), stage_bytes, stream, src, rows, width, k, dst, lengths, staged_threads > 0);
}

// Byte layout of the temporaries for a (la_count x lb_count) piece of the output.
struct OverlapTemps {
  size_t a_rows, a_len, b_rows, b_len, totals;
  OverlapTemps(int64_t la_count, int64_t lb_count, int64_t n, int k)
      : a_rows(align_bytes(sizeof(int32_t) * la_count * n * k)),
        a_len(align_bytes(sizeof(uint16_t) * la_count * n)),
        b_rows(align_bytes(sizeof(int32_t) * lb_count * n * k)),
        b_len(align_bytes(sizeof(uint16_t) * lb_count * n)),
        totals(align_bytes(sizeof(unsigned long long) * la_count * lb_count)) {}
  size_t bytes() const { return a_rows + a_len + b_rows + b_len + totals; }
};

}  // namespace
}  // namespace detail

void overlap(const OverlapProblem& p, double* mean, uint16_t* counts, int device,
             void* stream_ptr) {
  using namespace detail;
  limits::check_overlap(p.La, p.Lb, p.n, p.ka, p.kb, p.k);
  if (p.La == 0 || p.Lb == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t n = p.n;
  const int k = p.k;
  const double inv = 1.0 / (static_cast<double>(k) * static_cast<double>(n));

  // Whole problem at once when the temporaries fit; otherwise halve the larger side.
  const int64_t sort_layers = limits::overlap_layers_per_launch(n);  // sort grid.x limit
  int64_t la_chunk = std::min({p.La, kMaxGridY, sort_layers});
  int64_t lb_chunk = std::min({p.Lb, kMaxGridY * kPairsPerBlock, sort_layers});
  StreamBuffer temp(stream);
  while (!temp.try_allocate(OverlapTemps(la_chunk, lb_chunk, n, k).bytes())) {
    if (la_chunk == 1 && lb_chunk == 1) {
      throw std::runtime_error("CUDA overlap: out of device memory even for one pair of layers");
    }
    if (la_chunk >= lb_chunk) {
      la_chunk = (la_chunk + 1) / 2;
    } else {
      lb_chunk = (lb_chunk + 1) / 2;
    }
  }
  const OverlapTemps layout(la_chunk, lb_chunk, n, k);
  int32_t* a_rows = temp.as<int32_t>();
  uint16_t* a_len = temp.as<uint16_t>(layout.a_rows);
  int32_t* b_rows = temp.as<int32_t>(layout.a_rows + layout.a_len);
  uint16_t* b_len = temp.as<uint16_t>(layout.a_rows + layout.a_len + layout.b_rows);
  auto* totals = temp.as<unsigned long long>(layout.a_rows + layout.a_len + layout.b_rows +
                                             layout.b_len);
  const bool b_once = lb_chunk >= p.Lb;
  if (b_once) launch_sort_rows(p.b, p.Lb * n, p.kb, k, b_rows, b_len, stream);

  for (int64_t a0 = 0; a0 < p.La; a0 += la_chunk) {
    const int64_t la_count = std::min(la_chunk, p.La - a0);
    launch_sort_rows(p.a + a0 * n * p.ka, la_count * n, p.ka, k, a_rows, a_len, stream);
    for (int64_t b0 = 0; b0 < p.Lb; b0 += lb_chunk) {
      const int64_t lb_count = std::min(lb_chunk, p.Lb - b0);
      if (!b_once) launch_sort_rows(p.b + b0 * n * p.kb, lb_count * n, p.kb, k, b_rows, b_len, stream);
      LAYERKNN_CUDA_CHECK(cudaMemsetAsync(totals, 0, sizeof(unsigned long long) * la_count * lb_count,
                                          stream));
      if (n > 0) {
        const dim3 grid(
            limits::grid_extent((n + kPromptsPerBlock - 1) / kPromptsPerBlock, limits::kMaxGridX, "x"),
            limits::grid_extent(la_count, kMaxGridY, "y"),
            limits::grid_extent((lb_count + kPairsPerBlock - 1) / kPairsPerBlock, kMaxGridY, "z"));
        launch_kernel(overlap_pairs_kernel, grid, dim3(kPromptsPerBlock), 0, stream, a_rows, a_len,
                      b_rows, b_len, n, k, static_cast<int>(lb_count), totals, counts, a0, b0, p.Lb);
      }
      const int64_t pairs = la_count * lb_count;
      launch_kernel(overlap_mean_kernel,
                    dim3(limits::grid_extent((pairs + 255) / 256, limits::kMaxGridX, "x")), dim3(256), 0,
                    stream, totals, la_count, lb_count, inv, mean, a0, b0, p.Lb);
    }
  }
  finish_call(stream, "layerknn CUDA overlap");
}

}  // namespace layerknn::cuda
