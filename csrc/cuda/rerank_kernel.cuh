// The candidate-to-answer kernels of the CUDA k-NN engine, shared by every candidate path:
//  * list_window_kernel: SIMT path. The fused kernel's approximate top-kl list of a row becomes
//    its candidate list: the entries within the window below the k-th key (common/
//    score_windows.h), or "scan every row" (count -1) when the list may have cut the window;
//  * tile_select_kernel: tensor-core path. Over a segment of a row of approximate GEMM scores
//    (a row may take several, e.g. the self-join's mirrored blocks): the k-th best key over the
//    row's candidates so far and the segment (warp top-k list), then every candidate and column
//    within the window, compacted into a list of capacity C (count -1 when it overflows);
//  * rerank_kernel: the exact score (common/exact_score.h, the CPU engine's) of every candidate
//    and the k best by the shared tie order, written as the answer.
// The window argument makes candidates a superset of the exact top k, so the answer is the CPU
// engine's bit for bit. One warp per query row, 8 rows per block.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/exact_score.h"
#include "common/metric.h"
#include "common/score_windows.h"
#include "cuda/warp_topk.cuh"

namespace layerknn::cuda::detail {

constexpr int kRerankThreads = 256;
constexpr int kRerankWarps = kRerankThreads / 32;

namespace {  // internal linkage: each including translation unit gets its own copy

// count[r] for row r of a fused list: how many leading entries (sorted best first) are within
// the window of the k-th, or -1 when the list is full and its last entry is still inside.
__global__ void list_window_kernel(const float* __restrict__ keys,  // [rows, kl] rank keys
                                         int64_t rows, int n, int kl, int k, int d, Metric metric,
                                         const windows::Norms* __restrict__ norm_x,  // [rows]
                                         const windows::Norms* __restrict__ max_y,   // [rows / n]
                                         bool list_is_all,  // kl = every valid database row
                                         int32_t* __restrict__ count) {  // [rows]
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float* row = keys + r * kl;
  const double error = windows::simt_key_error(metric, d, norm_x[r].a, max_y[r / n].a);
  const float threshold = windows::threshold_below(row[k - 1], windows::window_of(error));
  if (!list_is_all && row[kl - 1] >= threshold) {
    count[r] = -1;
    return;
  }
  int c = k;
  while (c < kl && row[c] >= threshold) ++c;
  count[r] = c;
}

}  // namespace

// The approximate key of tile entry (row i, column j): the GEMM's dot product, or for squared
// L2 2 dot - (|x_i|^2 + |y_j|^2) with fp32 squared norms (a rank key: larger is better).
__device__ __forceinline__ float gemm_key(float dot, Metric metric, const float* sq_x,
                                          const float* sq_y, int64_t i, int64_t j) {
  if (metric != Metric::SquaredL2) return dot;
  const float twice = dot + dot;
  return twice - (sq_x[i] + sq_y[j]);
}

// One warp per query row i = row_begin + t (t < rows) of a segment of approximate dots: columns
// [col0, col0 + cols), column col0 + c of row t at line[c * col_step] with line = tile +
// layer * layer_stride + row_offset + t * row_step (a GEMM block read as is, or transposed:
// the self-join computes each block once and feeds it to both its row and its column block).
// A row may take several segments, one launch after another; together they cover each valid
// column once. Its running state is its candidate list (cand, their keys in cand_key, count;
// count 0 before the first segment, -1 once it overflowed: the row is then scanned exactly).
// Each segment: the k-th best key over the list and the segment (warp top-k list), then the list
// is cut to the keys within the window of it and the segment's columns within the window are
// appended. The running k-th never exceeds the k-th over every column, so nothing of the final
// window is ever dropped, and every member of the final top k survives every cut: after the last
// segment the list is exactly the columns within the window of the row's true k-th (in visit
// order), or -1 when it overflowed on the way.
template <int K>
__global__ void __launch_bounds__(kRerankThreads)
tile_select_kernel(const float* __restrict__ tile,  // [layers, ...] approximate dots (see above)
                   int64_t layer_stride, int64_t row_offset, int64_t row_step, int64_t col_step,
                   int rows, int64_t row_begin, int64_t col0, int cols, int n, int m, int d, int k,
                   int capacity, Metric metric, bool exclude_self,
                   const float* __restrict__ sq_x,               // [layers, n] (squared L2)
                   const float* __restrict__ sq_y,               // [layers, m] (squared L2)
                   const windows::Norms* __restrict__ norm_x,    // [layers, n]
                   const windows::Norms* __restrict__ max_y,     // [layers]
                   int32_t* __restrict__ cand,                   // [layers, n, capacity]
                   float* __restrict__ cand_key,                 // [layers, n, capacity]
                   int32_t* __restrict__ count) {                // [layers, n]
  __shared__ float list_keys[kRerankWarps][K];
  __shared__ int32_t list_indices[kRerankWarps][K];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t = blockIdx.x * kRerankWarps + warp;
  const int64_t i = row_begin + t;
  if (t >= rows || i >= n) return;  // warp-uniform; no block barriers below
  const int64_t layer = blockIdx.y;
  const int64_t r = layer * n + i;
  const int given = count[r];
  if (given < 0) return;  // overflowed on an earlier segment: scanned exactly
  const float* line = tile + layer * layer_stride + row_offset + t * row_step;
  const float* sx = sq_x + layer * n;
  const float* sy = sq_y + layer * m;
  int32_t* out = cand + r * capacity;
  float* out_key = cand_key + r * capacity;
  auto column_key = [&](int c, bool* valid) {
    const int64_t j = col0 + c;
    *valid = c < cols && !(exclude_self && j == i);
    return *valid ? gemm_key(line[c * col_step], metric, sx, sy, i, j) : -INFINITY;
  };
  float* keys = list_keys[warp];
  int32_t* indices = list_indices[warp];
  list_reset<K>(keys, indices, lane);
  for (int base = 0; base < given; base += 32) {
    const int e = base + lane;
    const bool valid = e < given;
    list_offer<K>(keys, indices, k, valid ? out_key[e] : -INFINITY, valid ? out[e] : 0, valid, lane);
  }
  for (int base = 0; base < cols; base += 32) {
    bool valid = false;
    const float key = column_key(base + lane, &valid);
    list_offer<K>(keys, indices, k, key, static_cast<int32_t>(col0 + base + lane), valid, lane);
  }
  const double error = windows::gemm_key_error(metric, d, norm_x[r], max_y[layer]);
  const float threshold = windows::threshold_below(keys[k - 1], windows::window_of(error));
  int found = 0;
  for (int base = 0; base < given; base += 32) {  // in place: entry e moves to at <= e
    const int e = base + lane;
    const float key = e < given ? out_key[e] : -INFINITY;
    const int32_t j = e < given ? out[e] : 0;
    const bool keep = e < given && key >= threshold;
    const unsigned ballot = __ballot_sync(kFullMask, keep);  // every read before any write
    const int at = found + __popc(ballot & ((1u << lane) - 1u));
    if (keep) {
      out[at] = j;
      out_key[at] = key;
    }
    found += __popc(ballot);
    __syncwarp();
  }
  for (int base = 0; base < cols; base += 32) {
    bool valid = false;
    const float key = column_key(base + lane, &valid);
    const bool keep = valid && key >= threshold;
    const unsigned ballot = __ballot_sync(kFullMask, keep);
    const int at = found + __popc(ballot & ((1u << lane) - 1u));
    if (keep && at < capacity) {
      out[at] = static_cast<int32_t>(col0 + base + lane);
      out_key[at] = key;
    }
    found += __popc(ballot);
  }
  if (lane == 0) count[r] = found > capacity ? -1 : found;
}

// One warp per query row r = layer * n + i: exact scores of its candidates (cand[r][0, count)
// or every database row when count is -1), the k best written best first.
template <int K>
__global__ void __launch_bounds__(kRerankThreads)
rerank_kernel(const float* __restrict__ x,        // [layers, n, d]
              const float* __restrict__ y,        // [layers, m, d]
              const float* __restrict__ scale_x,  // [layers, n]
              const float* __restrict__ scale_y,  // [layers, m]
              const int32_t* __restrict__ cand,   // [rows, capacity]
              const int32_t* __restrict__ count,  // [rows]
              int64_t rows, int n, int m, int d, int k, int capacity, Metric metric,
              bool exclude_self,
              int32_t* __restrict__ out_index,  // [rows, k]
              float* __restrict__ out_score) {  // [rows, k]
  __shared__ float list_keys[kRerankWarps][K];
  __shared__ int32_t list_indices[kRerankWarps][K];
  __shared__ float part[kRerankWarps][32][exact::kLanes];  // 32 candidates x 16 lane sums
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRerankWarps + warp;
  if (r >= rows) return;  // warp-uniform; no block barriers below
  const int64_t layer = r / n, i = r % n;
  const float* xrow = x + r * d;
  const float sx = scale_x[r];
  const float* yl = y + layer * m * static_cast<int64_t>(d);
  const float* syl = scale_y + layer * m;
  const int given = count[r];
  const int total = given < 0 ? m : given;
#if defined(LAYERKNN_CUDA_EMULATION)
  if (lane == 0 && given < 0) ++emu::rerank_scanned;  // test hooks (csrc/cuda/emulation)
  if (lane == 0 && given >= 0) emu::rerank_candidates += given;
#endif
  const int32_t* list = cand + r * capacity;
  auto candidate = [&](int e, int32_t* id) {  // false when e is past the end or the row itself
    if (e >= total) return false;
    *id = given < 0 ? e : list[e];
    return !(exclude_self && given < 0 && *id == i);
  };
  float* keys = list_keys[warp];
  int32_t* indices = list_indices[warp];
  list_reset<K>(keys, indices, lane);
  const int half = lane / exact::kLanes, sub = lane % exact::kLanes;
  for (int base = 0; base < total; base += 32) {
    for (int q = half; q < 32; q += 2) {  // each half-warp scores one candidate, a lane each
      int32_t j = 0;
      float v = 0.f;
      if (candidate(base + q, &j)) {
        const float* yrow = yl + static_cast<int64_t>(j) * d;
        v = metric == Metric::SquaredL2 ? exact::sqdist_lane(xrow, yrow, d, sub)
                                        : exact::dot_lane(xrow, sx, yrow, syl[j], d, sub);
      }
      part[warp][q][sub] = v;
    }
    __syncwarp();
    int32_t j = kNoIndex;
    const bool valid = candidate(base + lane, &j);
    const float key = valid ? rank_key(exact::reduce_lanes(part[warp][lane]), metric) : -INFINITY;
    __syncwarp();  // every lane has read its sums before the next batch overwrites them
    list_offer<K>(keys, indices, k, key, j, valid, lane);
  }
  list_store(keys, indices, k, metric, true, out_index + r * k, out_score + r * k, lane);
}

}  // namespace layerknn::cuda::detail
