// Launch descriptions shared by the k-NN host driver (knn_cuda.cu) and the per-bucket kernel
// translation units (knn_k32.cu ... knn_k256.cu). Each bucket TU instantiates the fused kernel
// for one list capacity K and exposes it through a BucketOps table, so the driver never sees
// kernel templates and the four buckets compile in parallel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/metric.h"
#include "common/score_windows.h"

namespace layerknn::cuda::detail {

// One launch of the fused distance + top-k kernel over a chunk of `layers` layers.
struct FusedLaunch {
  const float* x = nullptr;        // [layers, n, d] queries
  const float* y = nullptr;        // [layers, m, d] database rows (x itself for the self-join)
  const float* x_scale = nullptr;  // [layers, n] inverse row norms (cosine) or nullptr
  const float* y_scale = nullptr;  // [layers, m] inverse row norms (cosine) or nullptr
  int layers = 0, n = 0, m = 0, d = 0, k = 0;
  Metric metric = Metric::Cosine;
  bool exclude_self = false;       // drop database row j == query row i
  bool vector_loads = false;       // d % 4 == 0 and x, y 16-byte aligned
  int splits = 1;                  // database tiles split over gridDim.z
  int tiles_per_split = 0;         // database tiles (of kTileN rows) per split
  bool as_scores = true;           // false: write rank keys even without splits
  int32_t* out_index = nullptr;    // [splits, layers, n, k]
  float* out_value = nullptr;      // [splits, layers, n, k]: scores if splits == 1, else rank keys
  cudaStream_t stream = nullptr;
};

// One launch of the merge kernel that reduces `splits` partial lists per row to the final k.
struct MergeLaunch {
  const float* part_key = nullptr;      // [splits, rows, k] rank keys
  const int32_t* part_index = nullptr;  // [splits, rows, k]
  int64_t rows = 0;                     // layers * n
  int splits = 0, k = 0;
  Metric metric = Metric::Cosine;
  bool as_scores = true;                // false: write rank keys (candidate lists to re-rank)
  int32_t* out_index = nullptr;         // [rows, k]
  float* out_score = nullptr;           // [rows, k] scores, or rank keys
  cudaStream_t stream = nullptr;
};

// One launch of the exact re-rank over `rows` query rows (rerank_kernel.cuh).
struct RerankLaunch {
  const float* x = nullptr;         // [layers, n, d]
  const float* y = nullptr;         // [layers, m, d]
  const float* scale_x = nullptr;   // [layers, n] exact-score scales
  const float* scale_y = nullptr;   // [layers, m]
  const int32_t* cand = nullptr;    // [rows, capacity] candidate database rows
  const int32_t* count = nullptr;   // [rows] candidates per row, -1 = every database row
  int64_t rows = 0;                 // layers * n
  int n = 0, m = 0, d = 0, k = 0, capacity = 0;
  Metric metric = Metric::Cosine;
  bool exclude_self = false;
  int32_t* out_index = nullptr;     // [rows, k]
  float* out_score = nullptr;       // [rows, k]
  cudaStream_t stream = nullptr;
};

// One launch of the tensor-core path's threshold/select kernel over a segment of query rows
// [row_begin, row_begin + rows) x columns [col0, col0 + cols) of `layers` layers (rerank_kernel.cuh):
// column col0 + c of row row_begin + t at tile[layer * layer_stride + row_offset + t * row_step +
// c * col_step], so a GEMM block is read as is or transposed.
struct SelectLaunch {
  const float* tile = nullptr;             // [layers, layer_stride] approximate dot products
  int64_t layer_stride = 0, row_offset = 0, row_step = 0, col_step = 1;
  int layers = 0, rows = 0, cols = 0;
  int64_t row_begin = 0, col0 = 0;
  int n = 0, m = 0, d = 0, k = 0, capacity = 0;
  Metric metric = Metric::Cosine;
  bool exclude_self = false;
  const float* sq_x = nullptr;             // [layers, n] fp32 squared norms (squared L2)
  const float* sq_y = nullptr;             // [layers, m]
  const windows::Norms* norm_x = nullptr;  // [layers, n]
  const windows::Norms* max_y = nullptr;   // [layers]
  int32_t* cand = nullptr;                 // [layers, n, capacity] running candidate lists
  float* cand_key = nullptr;               // [layers, n, capacity] their approximate keys
  int32_t* count = nullptr;                // [layers, n] 0 before a row's first segment
  cudaStream_t stream = nullptr;
};

// Everything the driver needs to know about one K bucket.
struct BucketOps {
  int capacity;                              // K: largest k served by this bucket
  int tile_rows;                             // query rows per block (BM)
  void (*fused)(const FusedLaunch&);         // launches the fused kernel
  void (*merge)(const MergeLaunch&);         // launches the split-merge kernel
  int (*blocks_per_sm)(Metric metric);       // occupancy of the fused kernel on the current device
  void (*rerank)(const RerankLaunch&);       // exact re-rank + top-k (k <= capacity)
  void (*select)(const SelectLaunch&);       // tile threshold/select (k <= capacity)
};

const BucketOps& bucket_k32();
const BucketOps& bucket_k64();
const BucketOps& bucket_k128();
const BucketOps& bucket_k256();

// Database rows per tile of the fused kernel (shared by the driver's split arithmetic).
constexpr int kTileN = 128;

}  // namespace layerknn::cuda::detail
