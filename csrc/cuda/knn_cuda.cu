// Host driver of the CUDA k-NN engine (contract in knn_cuda.h): validates the problem (limits.h),
// picks the candidate path (knn_prepare.cuh: LAYERKNN_CUDA_KERNEL), and runs the SIMT one here;
// the tensor-core one is knn_tc.cu. Both end in the same exact re-rank (rerank_kernel.cuh), so
// their answers are the CPU engine's bit for bit. SIMT path, per chunk of layers: exact scales
// and norms (norms_kernel.cuh), the fused fp32 kernel keeping the kl >= k best approximate
// candidates per row (database axis split over extra blocks when there are too few query blocks
// to fill the GPU, a merge kernel then reduces the partial lists), the window that turns each
// list into candidates (or an exact scan of the row), and the re-rank. Chunks are sized so
// temporaries fit and grids stay within limits: an out-of-memory temporary halves the chunk.
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
#include "cuda/knn_prepare.cuh"
#include "cuda/rerank_kernel.cuh"

namespace layerknn::cuda {
namespace detail {
namespace {

constexpr int kMaxK = limits::kMaxK;
constexpr int kMaxSplits = 64;

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

bool has_tensor_core_path() { return detail::tensor_core_built(); }

namespace detail {

const BucketOps& bucket_for(int k) {
  if (k <= 32) return bucket_k32();
  if (k <= 64) return bucket_k64();
  if (k <= 128) return bucket_k128();
  return bucket_k256();
}

}  // namespace detail

void knn(const KnnProblem& problem, int32_t* indices, float* scores, int device, void* stream_ptr) {
  using namespace detail;
  validate(problem);
  if (problem.L == 0 || problem.n == 0) return;
  DeviceGuard guard(device);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (choose_path(problem) == CandidatePath::TensorCore) {
    knn_tensor_core(problem, indices, scores, stream);
  } else {
    knn_simt(problem, indices, scores, stream);
  }
  finish_call(stream, "layerknn CUDA k-NN");
}

namespace detail {

void knn_simt(const KnnProblem& problem, int32_t* indices, float* scores, cudaStream_t stream) {
  const int64_t L = problem.L, n = problem.n, d = problem.d;
  const bool self = problem.y == nullptr;
  const float* y = self ? problem.x : problem.y;
  const int64_t m = self ? n : problem.m;
  const int k = problem.k;
  const bool cosine = problem.metric == Metric::Cosine;
  const bool exclude = self && problem.exclude_self;
  // Lists of kl >= k approximate candidates (about 2k: room for the window), re-ranked exactly.
  const int valid = static_cast<int>(m - (exclude ? 1 : 0));
  const BucketOps& bucket = bucket_for(std::min(2 * k, kMaxK));
  const int kl = std::min(bucket.capacity, valid);

  FusedLaunch launch;
  launch.n = static_cast<int>(n);
  launch.m = static_cast<int>(m);
  launch.d = static_cast<int>(d);
  launch.k = kl;
  launch.metric = problem.metric;
  launch.exclude_self = exclude;
  launch.vector_loads = d % 4 == 0 && aligned16(problem.x) && aligned16(y);
  launch.stream = stream;

  int64_t chunk = std::min<int64_t>(L, limits::knn_layers_per_launch(n, m));
  int splits = choose_splits(bucket, problem.metric, chunk, n, m);
  StreamBuffer temp(stream);
  size_t o_scale_x, o_scale_y, o_norm_x, o_norm_y, o_max, o_keys, o_ids, o_part_keys, o_part_ids, o_count;
  for (;;) {
    Carver c;
    o_scale_x = c.add<float>(chunk * n);
    o_scale_y = c.add<float>(self ? 0 : chunk * m);
    o_norm_x = c.add<windows::Norms>(chunk * n);
    o_norm_y = c.add<windows::Norms>(self ? 0 : chunk * m);
    o_max = c.add<windows::Norms>(chunk);
    o_keys = c.add<float>(chunk * n * kl);
    o_ids = c.add<int32_t>(chunk * n * kl);
    o_part_keys = c.add<float>(splits > 1 ? splits * chunk * n * kl : 0);
    o_part_ids = c.add<int32_t>(splits > 1 ? splits * chunk * n * kl : 0);
    o_count = c.add<int32_t>(chunk * n);
    if (temp.try_allocate(c.bytes())) break;
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

  float* scale_x = temp.as<float>(o_scale_x);
  float* scale_y = self ? scale_x : temp.as<float>(o_scale_y);
  windows::Norms* norm_x = temp.as<windows::Norms>(o_norm_x);
  windows::Norms* norm_y = self ? norm_x : temp.as<windows::Norms>(o_norm_y);
  windows::Norms* max_y = temp.as<windows::Norms>(o_max);
  float* list_keys = temp.as<float>(o_keys);
  int32_t* list_ids = temp.as<int32_t>(o_ids);
  int32_t* count = temp.as<int32_t>(o_count);

  for (int64_t l0 = 0; l0 < L; l0 += chunk) {
    const int64_t layers = std::min(chunk, L - l0);
    const float* xc = problem.x + l0 * n * d;
    const float* yc = y + l0 * m * d;
    launch_row_norms(xc, layers * n, launch.d, cosine, scale_x, norm_x, nullptr, stream);
    if (!self) launch_row_norms(yc, layers * m, launch.d, cosine, scale_y, norm_y, nullptr, stream);
    launch_layer_max(norm_y, layers, m, max_y, stream);
    launch.x = xc;
    launch.y = yc;
    launch.x_scale = cosine ? scale_x : nullptr;
    launch.y_scale = cosine ? scale_y : nullptr;
    launch.layers = static_cast<int>(layers);
    launch.splits = splits;
    launch.tiles_per_split = tiles_per_split;
    launch.out_index = splits > 1 ? temp.as<int32_t>(o_part_ids) : list_ids;
    launch.out_value = splits > 1 ? temp.as<float>(o_part_keys) : list_keys;
    launch.as_scores = false;
    bucket.fused(launch);
    if (splits > 1) {
      MergeLaunch merge;
      merge.part_key = temp.as<float>(o_part_keys);
      merge.part_index = temp.as<int32_t>(o_part_ids);
      merge.rows = layers * n;
      merge.splits = splits;
      merge.k = kl;
      merge.metric = problem.metric;
      merge.as_scores = false;
      merge.out_index = list_ids;
      merge.out_score = list_keys;
      merge.stream = stream;
      bucket.merge(merge);
    }
    const int64_t rows = layers * n;
    launch_kernel(list_window_kernel, dim3(limits::grid_extent((rows + 255) / 256, limits::kMaxGridX, "x")),
                  dim3(256), 0, stream, list_keys, rows, launch.n, kl, k, launch.d, problem.metric,
                  norm_x, max_y, kl == valid, count);
    RerankLaunch rerank;
    rerank.x = xc;
    rerank.y = yc;
    rerank.scale_x = scale_x;
    rerank.scale_y = scale_y;
    rerank.cand = list_ids;
    rerank.count = count;
    rerank.rows = rows;
    rerank.n = launch.n;
    rerank.m = launch.m;
    rerank.d = launch.d;
    rerank.k = k;
    rerank.capacity = kl;
    rerank.metric = problem.metric;
    rerank.exclude_self = exclude;
    rerank.out_index = indices + l0 * n * k;
    rerank.out_score = scores + l0 * n * k;
    rerank.stream = stream;
    bucket_for(k).rerank(rerank);
  }
}

}  // namespace detail

}  // namespace layerknn::cuda
