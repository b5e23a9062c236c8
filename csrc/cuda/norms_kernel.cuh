// Row statistics of the CUDA k-NN engine: each row's scale and operand norm by the shared exact
// definition (common/exact_score.h: float64 16-lane squares, float64-derived fp32 cosine scale;
// the very values the CPU engine computes), and the per-layer maxima of the norms that the
// candidate windows (common/score_windows.h) are taken over. 16 threads per row, one lane each;
// the 16 partial sums meet in shared memory and one thread applies the shared halving tree.
// Included by knn_cuda.cu, knn_tc.cu and the CPU emulation.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/exact_score.h"
#include "common/score_windows.h"

namespace layerknn::cuda::detail {
namespace {  // internal linkage: each including translation unit gets its own kernels

constexpr int kNormThreads = 256;
constexpr int kNormRowsPerBlock = kNormThreads / exact::kLanes;

// scale[r] = the exact score's scale of row r; norms[r] = {a, a, 0} with a >= |v[r] * scale[r]|;
// sq[r] (if not null) = fp32 rounding of the float64 squared norm (squared-L2 GEMM keys).
__global__ void row_norms_kernel(const float* __restrict__ v,       // [rows, d]
                                 int64_t rows, int d, bool normalise,
                                 float* __restrict__ scale,          // [rows]
                                 windows::Norms* __restrict__ norms,  // [rows]
                                 float* __restrict__ sq) {           // [rows] or nullptr
  __shared__ double part[kNormThreads];
  const int lane = threadIdx.x % exact::kLanes, group = threadIdx.x / exact::kLanes;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormRowsPerBlock + group;
  part[threadIdx.x] = row < rows ? exact::sq_norm_lane(v + row * d, d, 1.f, lane) : 0.;
  __syncthreads();
  if (lane != 0 || row >= rows) return;
  const double s2 = exact::reduce_lanes(part + group * exact::kLanes);
  const float s = exact::row_scale(s2, normalise);
  const double a = exact::operand_norm(s2, s, normalise);
  scale[row] = s;
  norms[row] = windows::Norms{a, a, 0.};
  if (sq != nullptr) sq[row] = static_cast<float>(s2);
}

// out[l] = component-wise maximum of norms[l * rows, (l + 1) * rows). One block per layer.
__global__ void layer_max_kernel(const windows::Norms* __restrict__ norms,  // [layers, rows]
                                 int64_t rows,
                                 windows::Norms* __restrict__ out) {        // [layers]
  __shared__ double best[3][kNormThreads];
  const int64_t layer = blockIdx.x;
  double a = 0., p = 0., e = 0.;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const windows::Norms& q = norms[layer * rows + r];
    a = q.a > a ? q.a : a;
    p = q.p > p ? q.p : p;
    e = q.e > e ? q.e : e;
  }
  best[0][threadIdx.x] = a;
  best[1][threadIdx.x] = p;
  best[2][threadIdx.x] = e;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int t = 1; t < static_cast<int>(blockDim.x); ++t) {
    a = best[0][t] > a ? best[0][t] : a;
    p = best[1][t] > p ? best[1][t] : p;
    e = best[2][t] > e ? best[2][t] : e;
  }
  out[layer] = windows::Norms{a, p, e};
}

}  // namespace
}  // namespace layerknn::cuda::detail
