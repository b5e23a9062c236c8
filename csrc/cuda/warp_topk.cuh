// Warp-cooperative top-k list used by the fused k-NN kernel and the split-merge kernel.
// One warp owns one query row's list: `k` (score key, index) pairs in shared memory, kept sorted
// best first by layerknn::ranks_before (higher key, then lower index). Every lane offers one
// candidate at a time; a ballot against the current k-th entry filters almost all of them, and
// the survivors are inserted one by one by the whole warp (position by ballot + popcount, then a
// one-slot shift). Capacity K (a multiple of 32) is a compile-time bucket; k <= K at run time.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/metric.h"

namespace layerknn::cuda::detail {

constexpr unsigned kFullMask = 0xffffffffu;

// Sentinel that every real candidate ranks before: key -inf with the largest index. Inputs are
// finite (the Python layer rejects NaN/Inf), so real keys are finite and always win.
constexpr int32_t kNoIndex = 0x7fffffff;

// Fills a list with sentinels. Called by all 32 lanes of the owning warp.
template <int K>
__device__ __forceinline__ void list_reset(float* keys,       // [K]
                                           int32_t* indices,  // [K]
                                           int lane) {
#pragma unroll
  for (int t = 0; t < K / 32; ++t) {
    keys[t * 32 + lane] = -INFINITY;
    indices[t * 32 + lane] = kNoIndex;
  }
  __syncwarp();
}

// Inserts candidate (key, index) into the sorted list of length k if it ranks before the
// current k-th entry. The candidate must be the same on all 32 lanes (all lanes must call).
template <int K>
__device__ __forceinline__ void list_insert(float* keys,       // [K], slots [0, k) in use
                                            int32_t* indices,  // [K]
                                            int k, float key, int32_t index, int lane) {
  constexpr int kPerLane = K / 32;
  if (!ranks_before(key, index, keys[k - 1], indices[k - 1])) return;  // warp-uniform
  // Position = number of entries that rank before the candidate (the list is sorted).
  int pos = 0;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int p = t * 32 + lane;
    const bool before = p < k && ranks_before(keys[p], indices[p], key, index);
    pos += __popc(__ballot_sync(kFullMask, before));
  }
  // Shift slots (pos, k) one place towards the end; the old entry k-1 drops out.
  float moved_key[kPerLane];
  int32_t moved_index[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int p = t * 32 + lane;
    moved_key[t] = 0.f;
    moved_index[t] = 0;
    if (p < k && p > pos) {
      moved_key[t] = keys[p - 1];
      moved_index[t] = indices[p - 1];
    }
  }
  __syncwarp();  // every read above happens before any write below
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int p = t * 32 + lane;
    if (p < k && p == pos) {
      keys[p] = key;
      indices[p] = index;
    } else if (p < k && p > pos) {
      keys[p] = moved_key[t];
      indices[p] = moved_index[t];
    }
  }
  __syncwarp();
}

// Each lane offers its own candidate (ignored when !valid). Candidates that beat the k-th entry
// are inserted in lane order. All 32 lanes must call; the loop trip count is warp-uniform.
template <int K>
__device__ __forceinline__ void list_offer(float* keys,       // [K]
                                           int32_t* indices,  // [K]
                                           int k, float key, int32_t index, bool valid,
                                           int lane) {
  const bool pass = valid && ranks_before(key, index, keys[k - 1], indices[k - 1]);
  unsigned pending = __ballot_sync(kFullMask, pass);
  while (pending != 0u) {
    const int src = __ffs(pending) - 1;
    const float cand_key = __shfl_sync(kFullMask, key, src);
    const int32_t cand_index = __shfl_sync(kFullMask, index, src);
    list_insert<K>(keys, indices, k, cand_key, cand_index, lane);  // re-checks the threshold
    pending &= pending - 1u;
  }
}

// Writes the list's first k entries as (index, value): value = the metric's score when
// `as_scores`, else the raw rank key (for partial lists that a merge pass reads back).
__device__ __forceinline__ void list_store(const float* keys,       // [K]
                                           const int32_t* indices,  // [K]
                                           int k, Metric metric, bool as_scores,
                                           int32_t* out_index,  // [k]
                                           float* out_value,    // [k]
                                           int lane) {
  for (int p = lane; p < k; p += 32) {
    out_index[p] = indices[p];
    out_value[p] = as_scores ? rank_key(keys[p], metric) : keys[p];
  }
}

}  // namespace layerknn::cuda::detail
