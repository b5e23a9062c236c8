// Launch descriptions shared by the k-NN host driver (knn_cuda.cu) and the per-bucket kernel
// translation units (knn_k32.cu ... knn_k256.cu). Each bucket TU instantiates the fused kernel
// for one list capacity K and exposes it through a BucketOps table, so the driver never sees
// kernel templates and the four buckets compile in parallel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/metric.h"

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
  int32_t* out_index = nullptr;         // [rows, k]
  float* out_score = nullptr;           // [rows, k]
  cudaStream_t stream = nullptr;
};

// Everything the driver needs to know about one K bucket.
struct BucketOps {
  int capacity;                              // K: largest k served by this bucket
  int tile_rows;                             // query rows per block (BM)
  void (*fused)(const FusedLaunch&);         // launches the fused kernel
  void (*merge)(const MergeLaunch&);         // launches the split-merge kernel
  int (*blocks_per_sm)(Metric metric);       // occupancy of the fused kernel on the current device
};

const BucketOps& bucket_k32();
const BucketOps& bucket_k64();
const BucketOps& bucket_k128();
const BucketOps& bucket_k256();

// Database rows per tile of the fused kernel (shared by the driver's split arithmetic).
constexpr int kTileN = 128;

}  // namespace layerknn::cuda::detail
