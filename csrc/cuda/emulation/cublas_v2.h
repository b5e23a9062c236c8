// CPU stand-in for <cublas_v2.h> (emulation build only): the one cuBLAS call the tensor-core
// path makes, cublasGemmStridedBatchedEx with fp16/bf16/fp32 operands and fp32 output. Products
// are formed exactly (as tensor cores do for 16-bit operands) and summed in fp32 in the order
// emu::gemm_order names (LAYERKNN_EMU_GEMM_ORDER: sequential, reversed, pairwise, blocked,
// random, truncated), because a real GPU's accumulation order is unspecified: the candidate
// windows must hold for every order, and the tests run the engine under each one.
#pragma once
#include <algorithm>
#include <cfenv>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda_fp16.h"
#include "cuda_runtime.h"

enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1,
                      CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
struct cublasContext {
  cudaStream_t stream = nullptr;
};
using cublasHandle_t = cublasContext*;

namespace emu {
inline int gemm_calls = 0;  // tests check the tensor-core path really ran
inline long long gemm_entries = 0;  // output entries computed (m n batch summed over calls)
inline unsigned gemm_seed = 1;

// The accumulation order: env LAYERKNN_EMU_GEMM_ORDER (read at each call), default sequential.
inline std::string gemm_order() {
  const char* v = std::getenv("LAYERKNN_EMU_GEMM_ORDER");
  return v == nullptr ? "sequential" : v;
}

inline float read_operand(const void* base, cudaDataType_t type, int64_t at) {
  if (type == CUDA_R_16F) return __half2float(static_cast<const __half*>(base)[at]);
  if (type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[at]);
  return static_cast<const float*>(base)[at];
}

// Sum of terms[0, n) in fp32 in the given order (pairwise: recursive halves; blocked: blocks of
// 16 summed, then the block sums; random: a fresh seeded permutation per entry; truncated:
// sequential with every addition rounded towards zero, as tensor cores may).
inline float accumulate(std::vector<float>& terms, const std::string& order, std::mt19937& rng) {
  const int n = static_cast<int>(terms.size());
  float acc = 0.f;
  if (order == "reversed") {
    for (int t = n - 1; t >= 0; --t) acc += terms[t];
  } else if (order == "pairwise") {
    for (int width = 1; width < n; width *= 2)
      for (int t = 0; t + width < n; t += 2 * width) terms[t] += terms[t + width];
    acc = n > 0 ? terms[0] : 0.f;
  } else if (order == "blocked") {
    for (int b = 0; b < n; b += 16) {
      float block = 0.f;
      for (int t = b; t < n && t < b + 16; ++t) block += terms[t];
      acc += block;
    }
  } else if (order == "random") {
    std::shuffle(terms.begin(), terms.end(), rng);
    for (float v : terms) acc += v;
  } else if (order == "truncated") {
    const int mode = std::fegetround();
    std::fesetround(FE_TOWARDZERO);
    volatile float s = 0.f;  // keep the additions at run time, under this rounding mode
    for (float v : terms) s = s + v;
    acc = s;
    std::fesetround(mode);
  } else {
    for (float v : terms) acc += v;
  }
  return acc;
}
}  // namespace emu

inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
inline const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}

// Column-major C[i + j ldc] = alpha sum_t op(A)[i, t] op(B)[t, j] + beta C, per batch entry.
inline cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const void* alpha, const void* A, cudaDataType_t atype, int lda, long long stride_a,
    const void* B, cudaDataType_t btype, int ldb, long long stride_b, const void* beta, void* C,
    cudaDataType_t ctype, int ldc, long long stride_c, int batch, cublasComputeType_t, cublasGemmAlgo_t) {
  if (ctype != CUDA_R_32F || *static_cast<const float*>(alpha) != 1.f ||
      *static_cast<const float*>(beta) != 0.f) {
    return CUBLAS_STATUS_INVALID_VALUE;  // the engine never asks for more
  }
  ++emu::gemm_calls;
  emu::gemm_entries += static_cast<long long>(m) * n * batch;
  const std::string order = emu::gemm_order();
  std::mt19937 rng(emu::gemm_seed++);
  std::vector<float> terms(k);
  for (int b = 0; b < batch; ++b)
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        for (int t = 0; t < k; ++t) {
          const int64_t ai = transa == CUBLAS_OP_N ? i + int64_t{t} * lda : t + int64_t{i} * lda;
          const int64_t bi = transb == CUBLAS_OP_N ? t + int64_t{j} * ldb : j + int64_t{t} * ldb;
          // products of 16-bit operands are exact in fp32 (double product, one rounding)
          terms[t] = static_cast<float>(double(emu::read_operand(A, atype, b * stride_a + ai)) *
                                        double(emu::read_operand(B, btype, b * stride_b + bi)));
        }
        static_cast<float*>(C)[b * stride_c + i + int64_t{j} * ldc] = emu::accumulate(terms, order, rng);
      }
  return CUBLAS_STATUS_SUCCESS;
}
