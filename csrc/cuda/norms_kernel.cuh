// Cosine pre-kernel of the CUDA k-NN engine: fp32 inverse L2 norm of every row, one warp per
// row, so the fused kernel can scale rows while staging them (x_t * (1/|x|)). The CPU engine
// derives its scale from a float64 norm instead, so the two scales can differ in the last bit.
// Included by knn_cuda.cu and by the CPU emulation test only.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace layerknn::cuda::detail {
namespace {  // internal linkage: each including translation unit gets its own kernels

// inv[r] = 1 / ||v[r]|| with an fp32 sum of squares (32 lane partials + a shuffle tree, not the
// CPU engine's float64 norm). One warp per row.
__global__ void inverse_norms_kernel(const float* __restrict__ v,  // [rows, d]
                                     int64_t rows, int d,
                                     float* __restrict__ inv) {    // [rows]
  const int lane = threadIdx.x & 31;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row >= rows) return;  // warp-uniform
  const float* p = v + row * d;
  float sum = 0.f;
  for (int t = lane; t < d; t += 32) sum = fmaf(p[t], p[t], sum);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) inv[row] = 1.f / sqrtf(sum);
}

}  // namespace
}  // namespace layerknn::cuda::detail
