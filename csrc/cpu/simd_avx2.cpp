// AVX2 + FMA kernels of the CPU k-NN engine (see knn_kernels.h), for x86-64 CPUs without
// AVX-512. Same structure as the AVX-512 table at half the width: a 4 x 24 fp32 score block in 12
// ymm accumulators, row-major broadcast panels, and the exact score computed as 16 lanes (two ymm
// halves) with the shared halving tree, so its results equal the other tables' bit for bit.
#include "cpu/arch.h"
#include "cpu/knn_kernels.h"
#include "cpu/pack_fp32.h"

#if LAYERKNN_X86
#include <immintrin.h>

#include <cmath>

#define LAYERKNN_AVX2 __attribute__((target("avx2,fma")))

namespace layerknn::cpu {
namespace {

constexpr int kMr = 4;
constexpr int kNr = 24;

// Loads up to 8 floats starting at x (left may be <= 0: all zero).
LAYERKNN_AVX2 inline __m256 load8(const float* x, int64_t left) {
  if (left >= 8) return _mm256_loadu_ps(x);
  if (left <= 0) return _mm256_setzero_ps();
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), idx);
  return _mm256_maskload_ps(x, mask);
}

LAYERKNN_AVX2 inline float reduce_lanes(__m256 lo, __m256 hi) {
  const __m256 w8 = _mm256_add_ps(lo, hi);
  const __m128 w4 = _mm_add_ps(_mm256_castps256_ps128(w8), _mm256_extractf128_ps(w8, 1));
  const __m128 w2 = _mm_add_ps(w4, _mm_movehl_ps(w4, w4));
  const __m128 w1 = _mm_add_ss(w2, _mm_shuffle_ps(w2, w2, 1));
  return _mm_cvtss_f32(w1);
}

// Four rows of b at a time (each with its own two accumulators, so the per-row sums are the
// very same FMA chains as one row at a time) hide the FMA latency and share the loads of a.
LAYERKNN_AVX2 void dot_batch(const float* a, float sa, const float* const* b, const float* sb,
                             int count, int64_t d, float* out) {
  const __m256 s_a = _mm256_set1_ps(sa);
  int q = 0;
  for (; q + 4 <= count; q += 4) {
    __m256 lo[4], hi[4], s_b[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      lo[j] = hi[j] = _mm256_setzero_ps();
      s_b[j] = _mm256_set1_ps(sb[q + j]);
    }
    for (int64_t t = 0; t < d; t += 16) {
      const __m256 a0 = _mm256_mul_ps(load8(a + t, d - t), s_a);
      const __m256 a1 = _mm256_mul_ps(load8(a + t + 8, d - t - 8), s_a);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        lo[j] = _mm256_fmadd_ps(a0, _mm256_mul_ps(load8(b[q + j] + t, d - t), s_b[j]), lo[j]);
        hi[j] = _mm256_fmadd_ps(a1, _mm256_mul_ps(load8(b[q + j] + t + 8, d - t - 8), s_b[j]), hi[j]);
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) out[q + j] = reduce_lanes(lo[j], hi[j]);
  }
  for (; q < count; ++q) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    const __m256 s_b = _mm256_set1_ps(sb[q]);
    for (int64_t t = 0; t < d; t += 16) {
      const __m256 a0 = _mm256_mul_ps(load8(a + t, d - t), s_a);
      const __m256 a1 = _mm256_mul_ps(load8(a + t + 8, d - t - 8), s_a);
      lo = _mm256_fmadd_ps(a0, _mm256_mul_ps(load8(b[q] + t, d - t), s_b), lo);
      hi = _mm256_fmadd_ps(a1, _mm256_mul_ps(load8(b[q] + t + 8, d - t - 8), s_b), hi);
    }
    out[q] = reduce_lanes(lo, hi);
  }
}

LAYERKNN_AVX2 void sqdist_batch(const float* a, const float* const* b, int count, int64_t d,
                                float* out) {
  for (int q = 0; q < count; ++q) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t t = 0; t < d; t += 16) {
      const __m256 d0 = _mm256_sub_ps(load8(a + t, d - t), load8(b[q] + t, d - t));
      const __m256 d1 = _mm256_sub_ps(load8(a + t + 8, d - t - 8), load8(b[q] + t + 8, d - t - 8));
      lo = _mm256_fmadd_ps(d0, d0, lo);
      hi = _mm256_fmadd_ps(d1, d1, hi);
    }
    out[q] = reduce_lanes(lo, hi);
  }
}

// Sum of squares in float64 of x * scale (rounded to fp32 first): 16 lanes (lane = t mod 16)
// in four ymm accumulators, then the shared halving tree.
LAYERKNN_AVX2 double sum_squares(const float* x, int64_t d, float scale) {
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  const __m256 s = _mm256_set1_ps(scale);
  for (int64_t t = 0; t < d; t += 16) {
    const __m256 v0 = _mm256_mul_ps(load8(x + t, d - t), s);
    const __m256 v1 = _mm256_mul_ps(load8(x + t + 8, d - t - 8), s);
    const __m256d l0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v0));
    const __m256d l1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v0, 1));
    const __m256d l2 = _mm256_cvtps_pd(_mm256_castps256_ps128(v1));
    const __m256d l3 = _mm256_cvtps_pd(_mm256_extractf128_ps(v1, 1));
    a0 = _mm256_fmadd_pd(l0, l0, a0);
    a1 = _mm256_fmadd_pd(l1, l1, a1);
    a2 = _mm256_fmadd_pd(l2, l2, a2);
    a3 = _mm256_fmadd_pd(l3, l3, a3);
  }
  const __m256d w4 = _mm256_add_pd(_mm256_add_pd(a0, a2), _mm256_add_pd(a1, a3));
  const __m128d w2 = _mm_add_pd(_mm256_castpd256_pd128(w4), _mm256_extractf128_pd(w4, 1));
  return _mm_cvtsd_f64(_mm_add_sd(w2, _mm_unpackhi_pd(w2, w2)));
}

LAYERKNN_AVX2 void row_stats(const float* x, int64_t d, bool normalise, RowStats* out) {
  fp32_row_stats([](const float* v, int64_t n, float s) { return sum_squares(v, n, s); }, x, d,
                 normalise, out);
}

// Packing: the shared plain loops (pack_fp32.h), vectorised here for AVX2.
LAYERKNN_AVX2 void pack_vector_side(const float* src, int64_t count, int64_t d,
                                    const float* scale, int64_t dpad, void* dst) {
  pack_fp32_vector_side<kNr>(src, count, d, scale, dpad, static_cast<float*>(dst));
}

LAYERKNN_AVX2 void pack_broadcast_side(const float* src, int64_t count, int64_t d,
                                       const float* scale, int64_t dpad, void* dst) {
  pack_fp32_broadcast_side<kMr>(src, count, d, scale, dpad, static_cast<float*>(dst));
}

LAYERKNN_AVX2 void gemm(const void* broadcast_, int64_t rows_pad, const void* vector_,
                        int64_t cols_pad, int64_t dpad, float* tile, int64_t lds, const TileScales*) {
  const float* broadcast = static_cast<const float*>(broadcast_);
  const float* vector = static_cast<const float*>(vector_);
  for (int64_t c0 = 0; c0 < cols_pad; c0 += kNr) {
    const float* panel = vector + c0 * dpad;
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kMr) {
      const float* a = broadcast + r0 * dpad;
      __m256 acc[kMr][3];
#pragma GCC unroll 4
      for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = acc[r][2] = _mm256_setzero_ps();
      const float* b = panel;
      for (int64_t t = 0; t < dpad; ++t, b += kNr) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
        const __m256 b2 = _mm256_loadu_ps(b + 16);
#pragma GCC unroll 4
        for (int r = 0; r < kMr; ++r) {
          const __m256 av = _mm256_broadcast_ss(a + r * dpad + t);
          acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
          acc[r][2] = _mm256_fmadd_ps(av, b2, acc[r][2]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < kMr; ++r) {
        float* out = tile + (r0 + r) * lds + c0;
        _mm256_storeu_ps(out, acc[r][0]);
        _mm256_storeu_ps(out + 8, acc[r][1]);
        _mm256_storeu_ps(out + 16, acc[r][2]);
      }
    }
  }
}

LAYERKNN_AVX2 void scan_tile(float* tile, int64_t lds, int rows, int cols, const ScanTarget& t) {
  CandidateLists& lists = *t.lists;
  const float* thr = lists.thresholds();
  const float* thr_col = thr + t.col_list;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int r = 0; r < rows; ++r) {
    float* line = tile + r * lds;
    const __m256 lr = _mm256_set1_ps(t.l2_row ? t.l2_row[r] : 0.f);
    for (int c = 0; c < cols; c += 8) {
      const __m256i cols_idx = _mm256_add_epi32(lane, _mm256_set1_epi32(c));
      __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), cols_idx);
      if (t.skip_diagonal) {
        valid = _mm256_andnot_si256(_mm256_cmpeq_epi32(cols_idx, _mm256_set1_epi32(r)), valid);
      }
      if (t.upper_only) {  // c >= r
        valid = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(r), cols_idx), valid);
      }
      __m256 v = _mm256_loadu_ps(line + c);
      if (t.l2_row) {
        const __m256 norms = _mm256_add_ps(lr, load8(t.l2_col + c, cols - c));
        v = _mm256_sub_ps(_mm256_add_ps(v, v), norms);
        _mm256_storeu_ps(line + c, v);
      }
      const __m256 vmask = _mm256_castsi256_ps(valid);
      const __m256 ge_col =
          _mm256_and_ps(vmask, _mm256_cmp_ps(v, load8(thr_col + c, cols - c), _CMP_GE_OQ));
      for (unsigned bits = unsigned(_mm256_movemask_ps(ge_col)); bits; bits &= bits - 1) {
        const int cc = c + __builtin_ctz(bits);
        lists.insert(t.col_list + cc, line[cc], t.row_id + r, t.windows[t.col_list + cc]);
      }
      if (t.row_list >= 0) {
        const __m256 tr = _mm256_set1_ps(thr[t.row_list + r]);
        __m256 row_mask = vmask;
        if (t.upper_only) {  // c > r: the diagonal entry went to the column pass
          row_mask = _mm256_andnot_ps(
              _mm256_castsi256_ps(_mm256_cmpeq_epi32(cols_idx, _mm256_set1_epi32(r))), row_mask);
        }
        const __m256 ge_row = _mm256_and_ps(row_mask, _mm256_cmp_ps(v, tr, _CMP_GE_OQ));
        for (unsigned bits = unsigned(_mm256_movemask_ps(ge_row)); bits; bits &= bits - 1) {
          const int cc = c + __builtin_ctz(bits);
          lists.insert(t.row_list + r, line[cc], t.col_id + cc, t.windows[t.row_list + r]);
        }
      }
    }
  }
}

const KernelSet kAvx2 = {"avx2",           kMr,          kNr,       1,         4,
                         kFp32,            row_stats,    nullptr,    pack_vector_side,
                         pack_broadcast_side, gemm,      scan_tile, dot_batch, sqdist_batch, 1.};

}  // namespace

const KernelSet* avx2_kernels() { return &kAvx2; }

}  // namespace layerknn::cpu

#else

namespace layerknn::cpu {
const KernelSet* avx2_kernels() { return nullptr; }
}  // namespace layerknn::cpu

#endif
