// Host driver of the CUDA k-NN engine (contract in knn_cuda.h): validates the problem (limits.h),
// picks the K bucket, computes fp32 inverse row norms for cosine with a small pre-kernel, splits
// the database axis over extra blocks when there are too few query blocks to fill the GPU (a merge
// kernel then reduces the partial lists), and walks the layers in chunks sized so temporaries fit
// and grids stay within limits: an out-of-memory temporary halves the chunk instead of failing.
// Scores are the fused kernel's sequential fp32 FMA chain, not the CPU engine's score (see
// knn_kernel.cuh): indices can differ from the CPU's on near-ties.
//
// Planned design (not built yet): tensor-core candidate tiles X·Yᵀ by cuBLAS (TF32/bf16 GEMM per
// layer chunk); a threshold kernel keeping, per row, every column whose approximate score lies
// within a proven error window of the k-th best (the bound of cpu/tile_windows.h, moved to
// common/); a select kernel compacting those candidates; a re-rank kernel recomputing each one
// with the CPU's shared exact score (one __host__ __device__ function: 16-lane tree, float64-
// derived scale) and the shared tie order. GPU and CPU then agree bit for bit on any data; the
// SIMT fused kernel stays as the fallback for small d.
#include "cuda/knn_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/cuda_check.cuh"
#include "cuda/knn_launch.cuh"
#include "cuda/launch.cuh"
#include "cuda/limits.h"
#include "cuda/norms_kernel.cuh"

namespace layerknn::cuda {
namespace detail {
namespace {

constexpr int kMaxK = limits::kMaxK;
constexpr int kMaxSplits = 64;

void launch_inverse_norms(const float* v, int64_t rows, int d, float* inv, cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int threads = 256;
  const int64_t blocks = (rows * 32 + threads - 1) / threads;
  launch_kernel(inverse_norms_kernel, dim3(limits::grid_extent(blocks, limits::kMaxGridX, "x")),
                dim3(threads), 0, stream, v, rows, d, inv);
}

const BucketOps& bucket_for(int k) {
  if (k <= 32) return bucket_k32();
  if (k <= 64) return bucket_k64();
  if (k <= 128) return bucket_k128();
  return bucket_k256();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void validate(const KnnProblem& p) {
  if (p.x == nullptr) throw std::invalid_argument("x must be a device pointer, got null");
  const bool self = p.y == nullptr;
  limits::check_knn(p.L, p.n, self ? p.n : p.m, p.d, p.k, self, p.exclude_self);
}

// Number of database splits that brings the grid to about two full waves of the device.
int choose_splits(const BucketOps& bucket, Metric metric, int64_t layers, int64_t n, int64_t m) {
  int device = 0, sms = 0;
  LAYERKNN_CUDA_CHECK(cudaGetDevice(&device));
  LAYERKNN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t target = 2LL * sms * bucket.blocks_per_sm(metric);
  const int64_t blocks = layers * ((n + bucket.tile_rows - 1) / bucket.tile_rows);
  const int64_t m_tiles = (m + kTileN - 1) / kTileN;
  if (blocks >= target || m_tiles <= 1) return 1;
  const int64_t wanted = (target + blocks - 1) / blocks;
  return static_cast<int>(std::min<int64_t>({wanted, m_tiles, kMaxSplits}));
}

}  // namespace
}  // namespace detail

int device_count(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why != nullptr) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // do not leave the error behind for the next runtime call
    return 0;
  }
  if (count == 0 && why != nullptr) *why = "the CUDA runtime reports no devices";
  return count;
}

int max_k() { return detail::kMaxK; }

void knn(const KnnProblem& problem, int32_t* indices, float* scores, int device, void* stream_ptr) {
  using namespace detail;
  validate(problem);
  const int64_t L = problem.L, n = problem.n, d = problem.d;
  if (L == 0 || n == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool self = problem.y == nullptr;
  const float* y = self ? problem.x : problem.y;
  const int64_t m = self ? n : problem.m;
  const int k = problem.k;
  const bool cosine = problem.metric == Metric::Cosine;
  const BucketOps& bucket = bucket_for(k);

  FusedLaunch launch;
  launch.n = static_cast<int>(n);
  launch.m = static_cast<int>(m);
  launch.d = static_cast<int>(d);
  launch.k = k;
  launch.metric = problem.metric;
  launch.exclude_self = self && problem.exclude_self;
  launch.vector_loads = d % 4 == 0 && aligned16(problem.x) && aligned16(y);
  launch.stream = stream;

  // Temporaries per chunk of `chunk` layers: inverse norms (cosine) and partial lists (splits).
  int64_t chunk = std::min<int64_t>(L, limits::knn_layers_per_launch(n, m));
  int splits = choose_splits(bucket, problem.metric, chunk, n, m);
  StreamBuffer temp(stream);
  size_t norm_x_bytes = 0, norm_y_bytes = 0, part_bytes = 0;
  for (;;) {
    norm_x_bytes = cosine ? align_bytes(sizeof(float) * chunk * n) : 0;
    norm_y_bytes = (cosine && !self) ? align_bytes(sizeof(float) * chunk * m) : 0;
    part_bytes = splits > 1 ? align_bytes(sizeof(float) * splits * chunk * n * k) : 0;
    if (temp.try_allocate(norm_x_bytes + norm_y_bytes + 2 * part_bytes)) break;
    if (splits > 1) {
      splits = 1;  // lower occupancy beats failing
    } else if (chunk > 1) {
      chunk = (chunk + 1) / 2;
    } else {
      throw std::runtime_error("CUDA k-NN: out of device memory even for one layer's temporaries");
    }
  }
  const int64_t m_tiles = (m + kTileN - 1) / kTileN;
  const int tiles_per_split = static_cast<int>((m_tiles + splits - 1) / splits);
  splits = static_cast<int>(std::max<int64_t>(1, (m_tiles + tiles_per_split - 1) / tiles_per_split));

  float* inv_x = cosine ? temp.as<float>() : nullptr;
  float* inv_y = (cosine && !self) ? temp.as<float>(norm_x_bytes) : inv_x;
  float* part_key = temp.as<float>(norm_x_bytes + norm_y_bytes);
  int32_t* part_index = temp.as<int32_t>(norm_x_bytes + norm_y_bytes + part_bytes);

  for (int64_t l0 = 0; l0 < L; l0 += chunk) {
    const int64_t layers = std::min(chunk, L - l0);
    const float* xc = problem.x + l0 * n * d;
    const float* yc = y + l0 * m * d;
    int32_t* out_index = indices + l0 * n * k;
    float* out_score = scores + l0 * n * k;
    if (cosine) {
      launch_inverse_norms(xc, layers * n, launch.d, inv_x, stream);
      if (!self) launch_inverse_norms(yc, layers * m, launch.d, inv_y, stream);
    }
    launch.x = xc;
    launch.y = yc;
    launch.x_scale = inv_x;
    launch.y_scale = inv_y;
    launch.layers = static_cast<int>(layers);
    launch.splits = splits;
    launch.tiles_per_split = tiles_per_split;
    launch.out_index = splits > 1 ? part_index : out_index;
    launch.out_value = splits > 1 ? part_key : out_score;
    bucket.fused(launch);
    if (splits > 1) {
      MergeLaunch merge;
      merge.part_key = part_key;
      merge.part_index = part_index;
      merge.rows = layers * n;
      merge.splits = splits;
      merge.k = k;
      merge.metric = problem.metric;
      merge.out_index = out_index;
      merge.out_score = out_score;
      merge.stream = stream;
      bucket.merge(merge);
    }
  }
  finish_call(stream, "layerknn CUDA k-NN");
}

}  // namespace layerknn::cuda
