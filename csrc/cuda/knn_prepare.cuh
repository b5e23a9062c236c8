// Host-side pieces shared by the two candidate paths of the CUDA k-NN engine (knn_cuda.cu: SIMT
// fp32 lists; knn_tc.cu: tensor-core GEMM tiles): the row-statistics launches (exact scales and
// norms, layer maxima), a carver that lays several temporaries out in one allocation, and the
// LAYERKNN_CUDA_KERNEL knob that picks the path.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common/problems.h"
#include "common/score_windows.h"
#include "cuda/cuda_check.cuh"
#include "cuda/knn_launch.cuh"
#include "cuda/launch.cuh"
#include "cuda/limits.h"
#include "cuda/norms_kernel.cuh"

namespace layerknn::cuda::detail {

enum class CandidatePath { Simt, TensorCore };

// Whether this build has the tensor-core path (cuBLAS found at build time; knn_tc.cu).
bool tensor_core_built();

// The smallest K bucket with capacity >= k (knn_cuda.cu).
const BucketOps& bucket_for(int k);

// The two candidate paths, each ending in the exact re-rank; outputs [L, n, k] on the device.
void knn_simt(const KnnProblem& problem, int32_t* indices, float* scores, cudaStream_t stream);
void knn_tensor_core(const KnnProblem& problem, int32_t* indices, float* scores,
                     cudaStream_t stream);

// LAYERKNN_CUDA_KERNEL=auto|fp32|tc (unset = auto). auto takes the tensor-core GEMM for cosine
// (unit rows in fp16: narrow windows; inner product and squared L2 go through bf16 and wider
// windows, so only when forced) where tiles are big enough to pay for the extra passes (d >= 128
// and n m >= 2^20; an estimate, not yet measured on a GPU) and the build has cuBLAS; the fused
// SIMT kernel otherwise.
inline CandidatePath choose_path(const KnnProblem& p) {
  const char* env = std::getenv("LAYERKNN_CUDA_KERNEL");
  const std::string v = env == nullptr ? "" : env;
  if (v == "fp32") return CandidatePath::Simt;
  if (v == "tc") return CandidatePath::TensorCore;
  if (!v.empty() && v != "auto") {
    throw std::invalid_argument("LAYERKNN_CUDA_KERNEL must be auto, fp32 or tc, got '" + v + "'");
  }
  const int64_t m = p.y == nullptr ? p.n : p.m;
  const bool large = p.d >= 128 && p.n * m >= (int64_t{1} << 20);
  const bool tight = p.metric == Metric::Cosine;  // fp16 operands: windows ~2^-11 wide
  return large && tight && tensor_core_built() ? CandidatePath::TensorCore : CandidatePath::Simt;
}

// scale, norms (and sq, if not null) of `rows` rows of width d (norms_kernel.cuh).
inline void launch_row_norms(const float* v, int64_t rows, int d, bool normalise, float* scale,
                             windows::Norms* norms, float* sq, cudaStream_t stream) {
  if (rows == 0) return;
  const int64_t blocks = (rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock;
  launch_kernel(row_norms_kernel, dim3(limits::grid_extent(blocks, limits::kMaxGridX, "x")),
                dim3(kNormThreads), 0, stream, v, rows, d, normalise, scale, norms, sq);
}

inline void launch_layer_max(const windows::Norms* norms, int64_t layers, int64_t rows,
                             windows::Norms* out, cudaStream_t stream) {
  launch_kernel(layer_max_kernel, dim3(limits::grid_extent(layers, limits::kMaxGridX, "x")),
                dim3(kNormThreads), 0, stream, norms, rows, out);
}

// Lays out temporaries back to back in one allocation, each 256-byte aligned: add() returns a
// temporary's byte offset (for StreamBuffer::as), bytes() the total to allocate.
class Carver {
 public:
  template <class T>
  size_t add(int64_t count) {
    const size_t at = bytes_;
    bytes_ += align_bytes(sizeof(T) * static_cast<size_t>(count > 0 ? count : 0));
    return at;
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

}  // namespace layerknn::cuda::detail
