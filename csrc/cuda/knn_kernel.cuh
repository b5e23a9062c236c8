// The fused SIMT candidate kernel: fp32 tiles of X·Yᵀ (or of squared differences) computed in
// registers and fed straight into per-row warp top-k lists, so no n x m matrix ever exists.
// Every approximate score is one sequential fp32 fused-multiply-add chain over the feature axis
// on the exact score's own fp32 operands (rows pre-scaled by the shared cosine scale,
// norms_kernel.cuh); squared L2 is summed as (x - y)^2. It is NOT the exact score (that one sums
// 16 lanes by a halving tree, common/exact_score.h): the driver asks for a longer list (kl >= k)
// and re-ranks every entry within the proven window of the k-th (rerank_kernel.cuh), so the
// answer is the exact score's. The order of candidates and ties (lower index first) is the
// shared one. Self-join symmetry is not exploited.
//
// Block = 256 threads = 16 x 16 thread grid; a block owns BM query rows of one layer
// (blockIdx.x = row block, blockIdx.y = layer, blockIdx.z = database split). Per database tile of
// kTileN = 128 rows: a register-prefetched, double-buffered shared-memory pipeline over the
// feature axis in stages of kTileK = 16 (float4 global loads when d % 4 == 0), each thread
// accumulating a (BM/16) x 8 micro-tile; the tile of scores then goes through shared memory to
// the 8 warps, each owning BM/8 rows' top-K lists (warp_topk.cuh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/metric.h"
#include "cuda/knn_launch.cuh"
#include "cuda/warp_topk.cuh"

namespace layerknn::cuda::detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileK = 16;      // feature columns per pipeline stage
constexpr int kScorePad = 4;    // keeps score rows 16-byte aligned and spreads banks
constexpr int kScoreStride = kTileN + kScorePad;

enum class Accumulate { Dot, SquaredDiff };

template <int K, int BM>
struct FusedShape {
  static_assert(K % 32 == 0 && BM % 16 == 0, "bad bucket shape");
  static constexpr int kRowsPerThread = BM / 16;                       // TM
  static constexpr int kAQuads = BM * kTileK / 4;                      // float4 per A stage
  static constexpr int kAPerThread = (kAQuads + kThreads - 1) / kThreads;
  static constexpr int kBQuads = kTileN * kTileK / 4;
  static constexpr int kBPerThread = kBQuads / kThreads;
  static_assert(kBQuads % kThreads == 0, "B stage must split evenly");
  static constexpr int kGemmFloats = 2 * kTileK * (BM + kTileN);       // two stages of A and B
  static constexpr int kScoreFloats = BM * kScoreStride;
  static constexpr int kUnionFloats = kGemmFloats > kScoreFloats ? kGemmFloats : kScoreFloats;
  static constexpr size_t kSmemBytes =
      sizeof(float) * kUnionFloats + (sizeof(float) + sizeof(int32_t)) * BM * K;
  // One resident block per SM is enough to hide latency (64 independent FMAs per thread per
  // feature step); asking for two forces <= 128 registers and spills in the 8 x 8 micro-tile.
  static constexpr int kMinBlocks = 1;
};

// Loads 4 consecutive features [col, col+4) of row `row` of a [rows, d] matrix, zero outside.
__device__ __forceinline__ float4 load_quad(const float* __restrict__ base,  // [rows, d]
                                            int row, int rows, int col, int d, bool vector) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  if (row >= rows) return v;
  const float* p = base + static_cast<int64_t>(row) * d + col;
  if (vector) {  // d % 4 == 0 and col % 4 == 0: the quad is entirely inside or outside
    if (col < d) v = __ldg(reinterpret_cast<const float4*>(p));
  } else {
    if (col + 0 < d) v.x = __ldg(p + 0);
    if (col + 1 < d) v.y = __ldg(p + 1);
    if (col + 2 < d) v.z = __ldg(p + 2);
    if (col + 3 < d) v.w = __ldg(p + 3);
  }
  return v;
}

// Writes a staged quad transposed into a [kTileK, width] shared stage, scaled by `scale`.
__device__ __forceinline__ void store_quad(float* stage, int width, int row, int quad, float4 v,
                                           float scale) {
  stage[(quad * 4 + 0) * width + row] = v.x * scale;
  stage[(quad * 4 + 1) * width + row] = v.y * scale;
  stage[(quad * 4 + 2) * width + row] = v.z * scale;
  stage[(quad * 4 + 3) * width + row] = v.w * scale;
}

// Reads TM consecutive floats from shared memory with the widest aligned loads available.
template <int TM>
__device__ __forceinline__ void load_rows(const float* src, float (&dst)[TM]) {
  if constexpr (TM % 4 == 0) {
#pragma unroll
    for (int q = 0; q < TM / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(src)[q];
      dst[4 * q + 0] = v.x;
      dst[4 * q + 1] = v.y;
      dst[4 * q + 2] = v.z;
      dst[4 * q + 3] = v.w;
    }
  } else if constexpr (TM == 2) {
    const float2 v = *reinterpret_cast<const float2*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < TM; ++i) dst[i] = src[i];
  }
}

template <int K, int BM, Accumulate ACC>
__global__ void __launch_bounds__(kThreads, FusedShape<K, BM>::kMinBlocks)
fused_knn_kernel(const float* __restrict__ x,        // [layers, n, d] queries
                 const float* __restrict__ y,        // [layers, m, d] database rows
                 const float* __restrict__ x_scale,  // [layers, n] inverse norms or nullptr
                 const float* __restrict__ y_scale,  // [layers, m] inverse norms or nullptr
                 int n, int m, int d, int k, Metric metric, bool exclude_self, bool vector,
                 int tiles_per_split,
                 int32_t* __restrict__ out_index,  // [splits, layers, n, k]
                 float* __restrict__ out_value,    // [splits, layers, n, k]
                 bool as_scores) {
  using Shape = FusedShape<K, BM>;
  constexpr int TM = Shape::kRowsPerThread;
#if defined(LAYERKNN_CUDA_EMULATION)
  float4* smem_raw = emulated_dynamic_smem();  // CPU emulation test hook (csrc/cuda/emulation)
#else
  extern __shared__ float4 smem_raw[];
#endif
  float* smem = reinterpret_cast<float*>(smem_raw);
  float* stage_a = smem;                           // [2][kTileK][BM]
  float* stage_b = smem + 2 * kTileK * BM;         // [2][kTileK][kTileN]
  float* tile_scores = smem;                       // [BM][kScoreStride], aliases the stages
  float* list_keys = smem + Shape::kUnionFloats;   // [BM][K]
  int32_t* list_indices = reinterpret_cast<int32_t*>(list_keys + BM * K);  // [BM][K]

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int lane = tid & 31, warp = tid >> 5;
  const int layer = blockIdx.y, layers = gridDim.y, split = blockIdx.z;
  const int row0 = blockIdx.x * BM;
  const float* xl = x + static_cast<int64_t>(layer) * n * d;
  const float* yl = y + static_cast<int64_t>(layer) * m * d;
  const float* xs = x_scale ? x_scale + static_cast<int64_t>(layer) * n : nullptr;
  const float* ys = y_scale ? y_scale + static_cast<int64_t>(layer) * m : nullptr;

  for (int r = warp; r < BM; r += kWarps) list_reset<K>(list_keys + r * K, list_indices + r * K, lane);

  // Loader slots: slot s of this thread stages quad (e & 3) of tile row (e >> 2), e = tid + 256 s.
  // Cosine scales are re-read (cached) at each stash rather than held in registers.
  auto scale_of = [](const float* scale, int row, int rows) {
    return (scale != nullptr && row < rows) ? __ldg(scale + row) : 1.f;
  };

  const int m_tiles = (m + kTileN - 1) / kTileN;
  const int tile_begin = split * tiles_per_split;
  const int tile_end = min(m_tiles, tile_begin + tiles_per_split);
  const int k_stages = (d + kTileK - 1) / kTileK;

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int col0 = tile * kTileN;
    float4 next_a[Shape::kAPerThread];
    float4 next_b[Shape::kBPerThread];
    auto fetch = [&](int stage) {
#pragma unroll
      for (int s = 0; s < Shape::kAPerThread; ++s) {
        const int e = tid + s * kThreads;
        if (Shape::kAQuads % kThreads == 0 || e < Shape::kAQuads) {
          next_a[s] = load_quad(xl, row0 + (e >> 2), n, stage * kTileK + (e & 3) * 4, d, vector);
        }
      }
#pragma unroll
      for (int s = 0; s < Shape::kBPerThread; ++s) {
        const int e = tid + s * kThreads;
        next_b[s] = load_quad(yl, col0 + (e >> 2), m, stage * kTileK + (e & 3) * 4, d, vector);
      }
    };
    auto stash = [&](int buffer) {
      float* sa = stage_a + buffer * kTileK * BM;
      float* sb = stage_b + buffer * kTileK * kTileN;
#pragma unroll
      for (int s = 0; s < Shape::kAPerThread; ++s) {
        const int e = tid + s * kThreads;
        if (Shape::kAQuads % kThreads == 0 || e < Shape::kAQuads) {
          store_quad(sa, BM, e >> 2, e & 3, next_a[s], scale_of(xs, row0 + (e >> 2), n));
        }
      }
#pragma unroll
      for (int s = 0; s < Shape::kBPerThread; ++s) {
        const int e = tid + s * kThreads;
        store_quad(sb, kTileN, e >> 2, e & 3, next_b[s], scale_of(ys, col0 + (e >> 2), m));
      }
    };

    float acc[TM][8];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    }

    fetch(0);
    stash(0);
    __syncthreads();
    for (int stage = 0; stage < k_stages; ++stage) {
      const int buffer = stage & 1;
      if (stage + 1 < k_stages) fetch(stage + 1);  // global loads in flight during the FMAs
      const float* sa = stage_a + buffer * kTileK * BM + ty * TM;
      const float* sb = stage_b + buffer * kTileK * kTileN + tx * 4;
#pragma unroll
      for (int kk = 0; kk < kTileK; ++kk) {
        float a[TM];
        load_rows<TM>(sa + kk * BM, a);
        const float4 b0 = *reinterpret_cast<const float4*>(sb + kk * kTileN);
        const float4 b1 = *reinterpret_cast<const float4*>(sb + kk * kTileN + 64);
        const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            if constexpr (ACC == Accumulate::Dot) {
              acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            } else {
              const float diff = a[i] - b[j];
              acc[i][j] = fmaf(diff, diff, acc[i][j]);
            }
          }
        }
      }
      if (stage + 1 < k_stages) stash(buffer ^ 1);  // that buffer was last read one stage ago
      __syncthreads();
    }

    // Scores of this tile -> shared memory (the stages are dead: every thread passed the last
    // barrier), then each warp offers its rows' candidates to their lists.
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      float* dst = tile_scores + (ty * TM + i) * kScoreStride + tx * 4;
      *reinterpret_cast<float4*>(dst) = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
      *reinterpret_cast<float4*>(dst + 64) =
          make_float4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]);
    }
    __syncthreads();
    for (int r = warp; r < BM; r += kWarps) {
      const int i = row0 + r;
      if (i >= n) break;  // warp-uniform
      const float* row_scores = tile_scores + r * kScoreStride;
#pragma unroll
      for (int c = 0; c < kTileN / 32; ++c) {
        const int j = col0 + c * 32 + lane;
        const bool valid = j < m && !(exclude_self && j == i);
        const float key = rank_key(row_scores[c * 32 + lane], metric);
        list_offer<K>(list_keys + r * K, list_indices + r * K, k, key, j, valid, lane);
      }
    }
    __syncthreads();  // the next tile's stages overwrite tile_scores
  }

  for (int r = warp; r < BM; r += kWarps) {
    const int i = row0 + r;
    if (i >= n) break;
    const int64_t out_row = (static_cast<int64_t>(split) * layers + layer) * n + i;
    list_store(list_keys + r * K, list_indices + r * K, k, metric, as_scores,
               out_index + out_row * k, out_value + out_row * k, lane);
  }
}

// Reduces `splits` partial lists per row to the final top-k. One warp per row.
template <int K>
__global__ void __launch_bounds__(kThreads)
merge_splits_kernel(const float* __restrict__ part_key,      // [splits, rows, k]
                    const int32_t* __restrict__ part_index,  // [splits, rows, k]
                    int64_t rows, int splits, int k, Metric metric, bool as_scores,
                    int32_t* __restrict__ out_index,  // [rows, k]
                    float* __restrict__ out_score) {  // [rows, k] scores, or keys
  __shared__ float list_keys[kWarps][K];
  __shared__ int32_t list_indices[kWarps][K];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= rows) return;  // warp-uniform; no block barriers below
  float* keys = list_keys[warp];
  int32_t* indices = list_indices[warp];
  list_reset<K>(keys, indices, lane);
  const int total = splits * k;
  for (int base = 0; base < total; base += 32) {
    const int e = base + lane;
    float key = -INFINITY;
    int32_t index = kNoIndex;
    if (e < total) {
      const int64_t at = (static_cast<int64_t>(e / k) * rows + row) * k + e % k;
      key = part_key[at];
      index = part_index[at];
    }
    list_offer<K>(keys, indices, k, key, index, index != kNoIndex, lane);
  }
  list_store(keys, indices, k, metric, as_scores, out_index + row * k, out_score + row * k, lane);
}

}  // namespace layerknn::cuda::detail
