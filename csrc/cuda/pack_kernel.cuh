// Operand packing of the CUDA engine's tensor-core path: each row, times its exact-score scale,
// rounded to the GEMM operand type (fp16 for cosine, whose unit rows fit fp16's range with 8x
// bf16's precision; bf16 for inner product and squared L2, which keep fp32's range), with the
// two norms its candidate window needs (common/score_windows.h): p = |packed row| and
// e = |packed row - fp32 operand|, measured, so subnormals and overflow-free rounding of any
// kind are covered. 16 threads per row as in norms_kernel.cuh; the float64 sums may be in any
// order (they only enter bounds, within the windows' 1e-6 margin).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include <cstdint>

#include "common/score_windows.h"
#include "cuda/norms_kernel.cuh"

namespace layerknn::cuda::detail {

// Round-to-nearest conversions of one GEMM operand type.
template <class T>
struct Operand;
template <>
struct Operand<__half> {
  static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float to(__half h) { return __half2float(h); }
};
template <>
struct Operand<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float to(__nv_bfloat16 h) { return __bfloat162float(h); }
};

template <class T>
__global__ void pack_rows_kernel(const float* __restrict__ v,      // [rows, d]
                                 const float* __restrict__ scale,  // [rows]
                                 int64_t rows, int d,
                                 T* __restrict__ out,                 // [rows, d]
                                 windows::Norms* __restrict__ norms) {  // [rows]: sets p and e
  __shared__ double part[2][kNormThreads];
  const int lane = threadIdx.x % exact::kLanes, group = threadIdx.x / exact::kLanes;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormRowsPerBlock + group;
  double p2 = 0., e2 = 0.;
  if (row < rows) {
    const float s = scale[row];
    const float* src = v + row * d;
    T* dst = out + row * d;
    for (int t = lane; t < d; t += exact::kLanes) {
      const float a = src[t] * s;  // the exact score's fp32 operand
      const T h = Operand<T>::from(a);
      dst[t] = h;
      const double b = Operand<T>::to(h);
      const double diff = b - static_cast<double>(a);
      p2 += b * b;
      e2 += diff * diff;
    }
  }
  part[0][threadIdx.x] = p2;
  part[1][threadIdx.x] = e2;
  __syncthreads();
  if (lane != 0 || row >= rows) return;
  double p = 0., e = 0.;
  for (int l = 0; l < exact::kLanes; ++l) {
    p += part[0][threadIdx.x + l];
    e += part[1][threadIdx.x + l];
  }
  norms[row].p = sqrt(p);
  norms[row].e = sqrt(e);
}

}  // namespace layerknn::cuda::detail
