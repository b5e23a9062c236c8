// Kernels of the CUDA neighbour-overlap engine (driven by overlap_cuda.cu): a per-row sort +
// de-duplicate pre-pass (rows staged in shared memory), the all-pairs intersection-count kernel (one thread per prompt, a group
// of B layers per block, integer sums via shared then global atomics) and the final division.
// Kept in a header so the CPU emulation test (csrc/cuda/emulation) runs the very same code.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/intersect.h"

namespace layerknn::cuda::detail {
namespace {  // internal linkage: each including translation unit gets its own kernels

constexpr int kPromptsPerBlock = 256;  // one thread per prompt
constexpr int kPairsPerBlock = 32;     // layers of B handled by one block

// Shared memory one block of sort_rows_kernel may stage rows in (48 KiB: no opt-in needed).
constexpr int kSortStageBytes = 48 * 1024;

// Threads per block of sort_rows_kernel for rows of k values: as many as fit their rows in
// kSortStageBytes (a multiple of 32, at most 256), or 0 when not even one warp's rows fit (k >
// 384): the kernel then sorts in place in global memory, 256 threads a block.
inline int sort_rows_threads(int k) {
  const int fit = kSortStageBytes / (static_cast<int>(sizeof(int32_t)) * (k > 0 ? k : 1));
  return fit < 32 ? 0 : (fit >= 256 ? 256 : fit / 32 * 32);
}

// dst row r = sorted distinct values of src row r's first k columns; lengths[r] = their count.
// With `staged`, each thread copies its row into dynamic shared memory (blockDim.x * k int32,
// interleaved: value c of thread t at stage[c * blockDim.x + t], so a warp's accesses fall in
// distinct banks), sorts it there and writes only the distinct values back; otherwise it sorts
// in dst directly.
__global__ void sort_rows_kernel(const int32_t* __restrict__ src,  // [rows, width]
                                 int64_t rows, int width, int k,
                                 int32_t* __restrict__ dst,         // [rows, k]
                                 uint16_t* __restrict__ lengths,    // [rows]
                                 bool staged) {
#if defined(LAYERKNN_CUDA_EMULATION)
  int32_t* stage = reinterpret_cast<int32_t*>(emulated_dynamic_smem());  // CPU emulation test hook
#else
  extern __shared__ int32_t stage[];  // [k, blockDim.x] when staged
#endif
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  int32_t* out = dst + r * k;
  const int32_t* in = src + r * width;
  if (!staged) {
    for (int c = 0; c < k; ++c) out[c] = in[c];
    lengths[r] = static_cast<uint16_t>(sort_unique_small(out, k));
    return;
  }
  const int stride = static_cast<int>(blockDim.x);
  int32_t* row = stage + threadIdx.x;
  for (int c = 0; c < k; ++c) row[c * stride] = in[c];
  const int len = sort_unique_small(row, k, stride);
  for (int c = 0; c < len; ++c) out[c] = row[c * stride];
  lengths[r] = static_cast<uint16_t>(len);
}

// totals[la, lb] += sum over this block's prompts of |A[la, i] ∩ B[lb, i]|; counts per prompt.
__global__ void __launch_bounds__(kPromptsPerBlock)
overlap_pairs_kernel(const int32_t* __restrict__ a_rows,      // [la_count, n, k] sorted
                     const uint16_t* __restrict__ a_len,      // [la_count, n]
                     const int32_t* __restrict__ b_rows,      // [lb_count, n, k] sorted
                     const uint16_t* __restrict__ b_len,      // [lb_count, n]
                     int64_t n, int k, int lb_count,
                     unsigned long long* __restrict__ totals,  // [la_count, lb_count]
                     uint16_t* __restrict__ counts,  // [La, Lb, n] (whole output) or nullptr
                     int64_t La_offset, int64_t Lb_offset, int64_t Lb_total) {
#if defined(LAYERKNN_CUDA_EMULATION)
  unsigned int* block_totals = emulated_static_smem<unsigned int>();  // CPU emulation test hook
#else
  __shared__ unsigned int block_totals[kPairsPerBlock];
#endif
  const int tid = threadIdx.x;
  if (tid < kPairsPerBlock) block_totals[tid] = 0u;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kPromptsPerBlock + tid;
  const int la = blockIdx.y;
  const int lb_begin = blockIdx.z * kPairsPerBlock;
  const int lb_end = min(lb_count, lb_begin + kPairsPerBlock);
  const bool active = i < n;
  const int32_t* a = a_rows + (static_cast<int64_t>(la) * n + (active ? i : 0)) * k;
  const int na = active ? a_len[static_cast<int64_t>(la) * n + i] : 0;
  for (int lb = lb_begin; lb < lb_end; ++lb) {
    int c = 0;
    if (active) {
      const int64_t rb = static_cast<int64_t>(lb) * n + i;
      c = sorted_intersection_size(a, na, b_rows + rb * k, b_len[rb]);
      if (counts != nullptr) {
        counts[((La_offset + la) * Lb_total + Lb_offset + lb) * n + i] = static_cast<uint16_t>(c);
      }
    }
    const unsigned warp_sum = __reduce_add_sync(0xffffffffu, static_cast<unsigned>(c));
    if ((tid & 31) == 0 && warp_sum != 0u) atomicAdd(&block_totals[lb - lb_begin], warp_sum);
  }
  __syncthreads();
  if (tid < lb_end - lb_begin && block_totals[tid] != 0u) {
    atomicAdd(&totals[static_cast<int64_t>(la) * lb_count + lb_begin + tid],
              static_cast<unsigned long long>(block_totals[tid]));
  }
}

// mean[La_offset + la, Lb_offset + lb] = totals[la, lb] * inv (inv = 1 / (k n), as on the CPU).
__global__ void overlap_mean_kernel(const unsigned long long* __restrict__ totals,  // [la_count, lb_count]
                                    int64_t la_count, int64_t lb_count, double inv,
                                    double* __restrict__ mean,  // [La, Lb]
                                    int64_t La_offset, int64_t Lb_offset, int64_t Lb_total) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= la_count * lb_count) return;
  const int64_t la = e / lb_count, lb = e % lb_count;
  mean[(La_offset + la) * Lb_total + Lb_offset + lb] = static_cast<double>(totals[e]) * inv;
}

}  // namespace
}  // namespace layerknn::cuda::detail
