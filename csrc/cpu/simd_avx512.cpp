// AVX-512 kernels of the CPU k-NN engine (see knn_kernels.h), compiled with per-function target
// attributes so the rest of the build stays baseline x86-64. The fp32 GEMM keeps an 8 x 48 score
// block in 24 zmm accumulators (8 broadcast rows x 3 vectors of 16 columns) over the full
// feature dimension; the BF16 variant runs the same block on bf16 pairs with VDPBF16PS, twice the
// arithmetic per instruction, and the int8 variant on quads of per-row quantised codes with
// VPDPBUSD, four times. Packing (a 16 x 16 transpose for the bf16 and int8 vector sides), the
// threshold scan (with a lower bound that skips dead inserts into fresh lists) and the exact
// score are vectorised too.
#include "cpu/arch.h"
#include "cpu/knn_kernels.h"

#if LAYERKNN_X86
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers trip its own uninitialised-variable warning (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#define LAYERKNN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define LAYERKNN_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))
#define LAYERKNN_AVX512VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")))

namespace layerknn::cpu {
namespace {

constexpr int kMr = 8;
constexpr int kNr = 48;

LAYERKNN_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

// ---- exact score (16 lanes, halving tree; see simd_scalar.cpp) ------------------------------

LAYERKNN_AVX512 inline float reduce_lanes(__m512 v) {
  const __m256 w8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 w4 = _mm_add_ps(_mm256_castps256_ps128(w8), _mm256_extractf128_ps(w8, 1));
  const __m128 w2 = _mm_add_ps(w4, _mm_movehl_ps(w4, w4));
  const __m128 w1 = _mm_add_ss(w2, _mm_shuffle_ps(w2, w2, 1));
  return _mm_cvtss_f32(w1);
}

LAYERKNN_AVX512 void dot_batch(const float* a, float sa, const float* const* b, const float* sb,
                               int count, int64_t d, float* out) {
  const __m512 va_scale = _mm512_set1_ps(sa);
  int q = 0;
  for (; q + 4 <= count; q += 4) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const __m512 s0 = _mm512_set1_ps(sb[q]), s1 = _mm512_set1_ps(sb[q + 1]);
    const __m512 s2 = _mm512_set1_ps(sb[q + 2]), s3 = _mm512_set1_ps(sb[q + 3]);
    for (int64_t t = 0; t < d; t += 16) {
      const __mmask16 m = tail_mask(d - t);
      const __m512 av = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + t), va_scale);
      acc0 = _mm512_fmadd_ps(av, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, b[q] + t), s0), acc0);
      acc1 = _mm512_fmadd_ps(av, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, b[q + 1] + t), s1), acc1);
      acc2 = _mm512_fmadd_ps(av, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, b[q + 2] + t), s2), acc2);
      acc3 = _mm512_fmadd_ps(av, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, b[q + 3] + t), s3), acc3);
    }
    out[q] = reduce_lanes(acc0);
    out[q + 1] = reduce_lanes(acc1);
    out[q + 2] = reduce_lanes(acc2);
    out[q + 3] = reduce_lanes(acc3);
  }
  for (; q < count; ++q) {
    __m512 acc = _mm512_setzero_ps();
    const __m512 s = _mm512_set1_ps(sb[q]);
    for (int64_t t = 0; t < d; t += 16) {
      const __mmask16 m = tail_mask(d - t);
      const __m512 av = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + t), va_scale);
      acc = _mm512_fmadd_ps(av, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, b[q] + t), s), acc);
    }
    out[q] = reduce_lanes(acc);
  }
}

LAYERKNN_AVX512 void sqdist_batch(const float* a, const float* const* b, int count, int64_t d,
                                  float* out) {
  int q = 0;
  for (; q + 4 <= count; q += 4) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t t = 0; t < d; t += 16) {
      const __mmask16 m = tail_mask(d - t);
      const __m512 av = _mm512_maskz_loadu_ps(m, a + t);
      const __m512 d0 = _mm512_sub_ps(av, _mm512_maskz_loadu_ps(m, b[q] + t));
      const __m512 d1 = _mm512_sub_ps(av, _mm512_maskz_loadu_ps(m, b[q + 1] + t));
      const __m512 d2 = _mm512_sub_ps(av, _mm512_maskz_loadu_ps(m, b[q + 2] + t));
      const __m512 d3 = _mm512_sub_ps(av, _mm512_maskz_loadu_ps(m, b[q + 3] + t));
      acc0 = _mm512_fmadd_ps(d0, d0, acc0);
      acc1 = _mm512_fmadd_ps(d1, d1, acc1);
      acc2 = _mm512_fmadd_ps(d2, d2, acc2);
      acc3 = _mm512_fmadd_ps(d3, d3, acc3);
    }
    out[q] = reduce_lanes(acc0);
    out[q + 1] = reduce_lanes(acc1);
    out[q + 2] = reduce_lanes(acc2);
    out[q + 3] = reduce_lanes(acc3);
  }
  for (; q < count; ++q) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t t = 0; t < d; t += 16) {
      const __mmask16 m = tail_mask(d - t);
      const __m512 diff =
          _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + t), _mm512_maskz_loadu_ps(m, b[q] + t));
      acc = _mm512_fmadd_ps(diff, diff, acc);
    }
    out[q] = reduce_lanes(acc);
  }
}

// ---- row statistics --------------------------------------------------------------------------

// Float64 sum of 8 + 8 lanes (lane = t mod 16) by the same halving tree as the exact score.
LAYERKNN_AVX512 inline double reduce_lanes_pd(__m512d lanes_0_7, __m512d lanes_8_15) {
  const __m512d w8 = _mm512_add_pd(lanes_0_7, lanes_8_15);
  const __m256d w4 = _mm256_add_pd(_mm512_castpd512_pd256(w8), _mm512_extractf64x4_pd(w8, 1));
  const __m128d w2 = _mm_add_pd(_mm256_castpd256_pd128(w4), _mm256_extractf128_pd(w4, 1));
  return _mm_cvtsd_f64(_mm_add_sd(w2, _mm_unpackhi_pd(w2, w2)));
}

// Sum of squares in float64 of x * scale (rounded to fp32 first), 16 lanes + halving tree.
LAYERKNN_AVX512 double sum_squares(const float* x, int64_t d, float scale) {
  __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0;
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t t = 0; t < d; t += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(d - t), x + t), s);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    acc0 = _mm512_fmadd_pd(lo, lo, acc0);
    acc1 = _mm512_fmadd_pd(hi, hi, acc1);
  }
  return reduce_lanes_pd(acc0, acc1);
}

LAYERKNN_AVX512 void row_stats(const float* x, int64_t d, bool normalise, RowStats* out) {
  fp32_row_stats([](const float* v, int64_t n, float s) { return sum_squares(v, n, s); }, x, d,
                 normalise, out);
}

// ---- fp32 packing and GEMM -------------------------------------------------------------------

LAYERKNN_AVX512 void pack_vector_side(const float* src, int64_t count, int64_t d,
                                      const float* scale, int64_t dpad, void* dst_) {
  float* dst = static_cast<float*>(dst_);
  const int64_t panels = (count + kNr - 1) / kNr;
  for (int64_t p = 0; p < panels; ++p) {
    float* panel = dst + p * kNr * dpad;  // [dpad][kNr]
    const int64_t rows = count - p * kNr < kNr ? count - p * kNr : kNr;
    if (rows < kNr) std::memset(panel, 0, sizeof(float) * kNr * dpad);
    // Each row: 16 features at a time, scattered into its column of the panel.
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = src + (p * kNr + r) * d;
      const __m512 s = _mm512_set1_ps(scale ? scale[p * kNr + r] : 1.f);
      const __m512i offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8,
                                                                  7, 6, 5, 4, 3, 2, 1, 0),
                                                 _mm512_set1_epi32(kNr));
      for (int64_t t = 0; t < d; t += 16) {
        const __mmask16 m = tail_mask(d - t);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + t), s);
        _mm512_mask_i32scatter_ps(panel + t * kNr + r, m, offsets, v, 4);
      }
      for (int64_t t = d; t < dpad; ++t) panel[t * kNr + r] = 0.f;
    }
  }
}

LAYERKNN_AVX512 void pack_broadcast_side(const float* src, int64_t count, int64_t d,
                                         const float* scale, int64_t dpad, void* dst_) {
  float* dst = static_cast<float*>(dst_);
  const int64_t rows = (count + kMr - 1) / kMr * kMr;
  for (int64_t r = 0; r < rows; ++r) {
    float* out = dst + r * dpad;
    if (r >= count) {
      std::memset(out, 0, sizeof(float) * dpad);
      continue;
    }
    const __m512 s = _mm512_set1_ps(scale ? scale[r] : 1.f);
    for (int64_t t = 0; t < dpad; t += 16) {
      const int64_t left = dpad - t;
      const __m512 v =
          _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(d - t > 0 ? d - t : 0), src + r * d + t), s);
      _mm512_mask_storeu_ps(out + t, tail_mask(left), v);
    }
  }
}

// Feature chunk per pass: keeps a 48-row panel chunk in L1/L2 and the broadcast chunk in L2.
// Chunks continue each lane's running sum through the tile, so the sum order is unchanged.
// Chunks are balanced (at most kChunk steps each) so no pass is a short, overhead-heavy tail.
constexpr int64_t kChunk = 256;

inline int64_t chunk_steps(int64_t steps) {
  const int64_t chunks = (steps + kChunk - 1) / kChunk;
  return chunks <= 1 ? steps : (steps + chunks - 1) / chunks;
}

LAYERKNN_AVX512 void gemm(const void* broadcast_, int64_t rows_pad, const void* vector_,
                          int64_t cols_pad, int64_t dpad, float* tile, int64_t lds,
                          const TileScales*) {
  const float* broadcast = static_cast<const float*>(broadcast_);
  const float* vector = static_cast<const float*>(vector_);
  const int64_t chunk = chunk_steps(dpad);
  for (int64_t k0 = 0; k0 < dpad; k0 += chunk) {
    const int64_t k1 = std::min(dpad, k0 + chunk);
    for (int64_t c0 = 0; c0 < cols_pad; c0 += kNr) {
      const float* panel = vector + c0 * dpad;  // [dpad][48]
      for (int64_t r0 = 0; r0 < rows_pad; r0 += kMr) {
        const float* a = broadcast + r0 * dpad;
        __m512 acc[kMr][3];
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
          float* out = tile + (r0 + r) * lds + c0;
          if (k0 == 0) {
            acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
          } else {
            acc[r][0] = _mm512_loadu_ps(out);
            acc[r][1] = _mm512_loadu_ps(out + 16);
            acc[r][2] = _mm512_loadu_ps(out + 32);
          }
        }
        const float* b = panel + k0 * kNr;
        for (int64_t t = k0; t < k1; ++t, b += kNr) {
          const __m512 b0 = _mm512_loadu_ps(b);
          const __m512 b1 = _mm512_loadu_ps(b + 16);
          const __m512 b2 = _mm512_loadu_ps(b + 32);
#pragma GCC unroll 8
          for (int r = 0; r < kMr; ++r) {
            const __m512 av = _mm512_set1_ps(a[r * dpad + t]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(av, b2, acc[r][2]);
          }
        }
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
          float* out = tile + (r0 + r) * lds + c0;
          _mm512_storeu_ps(out, acc[r][0]);
          _mm512_storeu_ps(out + 16, acc[r][1]);
          _mm512_storeu_ps(out + 32, acc[r][2]);
        }
      }
    }
  }
}

// ---- threshold scan --------------------------------------------------------------------------

// CandidateLists::insert with the sorted-mode bookkeeping done branch-free: the key goes into
// the descending array of the k best by one compare, a lane permute and two masked moves.
LAYERKNN_AVX512 inline void insert(CandidateLists& lists, int64_t row, float key, int32_t id,
                                   float window) {
  if (!(key >= lists.thresholds()[row])) return;
  if (!lists.sorted_mode()) return lists.insert(row, key, id, window);
  const int k = lists.k();
  float* best = lists.best_keys(row);
  const __m512 old = _mm512_loadu_ps(best);
  const __m512 vkey = _mm512_set1_ps(key);
  const __mmask16 first_k = __mmask16((1u << k) - 1u);
  // pos = how many of the k best beat the key; pos == k (a key inside the window but not among
  // the k best) leaves every mask below empty. No branch on it: it is unpredictable.
  const int pos = __builtin_popcount(_mm512_mask_cmp_ps_mask(first_k, old, vkey, _CMP_GT_OQ));
  const __m512i down = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
  const __m512 shifted = _mm512_permutexvar_ps(down, old);
  const __mmask16 below = first_k & __mmask16(~((2u << pos) - 1u));
  __m512 updated = _mm512_mask_mov_ps(old, below, shifted);
  updated = _mm512_mask_mov_ps(updated, first_k & __mmask16(1u << pos), vkey);
  _mm512_storeu_ps(best, updated);
  int32_t& size = lists.best_count(row);
  size += int(size < k) & int(pos < k);
  lists.raise_threshold(row, best[k - 1], window);  // best[k - 1] is -inf until k keys: no-op
  lists.append(row, key, id);
}

// Which of columns c..c+15 of tile line r the column pass reads: inside the tile, not the
// excluded diagonal entry, and c >= r for an upper_only tile.
LAYERKNN_AVX512 inline __mmask16 column_pass_mask(int c, int cols, int r, const ScanTarget& t) {
  __mmask16 valid = tail_mask(cols - c);
  const bool diagonal_here = r >= c && r < c + 16;
  if (t.skip_diagonal && diagonal_here) valid &= __mmask16(~(1u << (r - c)));
  if (t.upper_only && r > c) valid &= r >= c + 16 ? __mmask16(0) : __mmask16(~((1u << (r - c)) - 1u));
  return valid;
}

// The row pass reads the same entries, less the diagonal of an upper_only tile (its one offer
// is the column pass's).
LAYERKNN_AVX512 inline __mmask16 row_pass_mask(int c, int cols, int r, const ScanTarget& t) {
  __mmask16 valid = column_pass_mask(c, cols, r, t);
  if (t.upper_only && r >= c && r < c + 16) valid &= __mmask16(~(1u << (r - c)));
  return valid;
}

// A lower bound on the k-th largest key of a tile line, from its 16 lane maxima m (k <= 16):
// the largest lane value that at least k lanes reach. Lanes are distinct tile entries, so at
// least k entries are >= the bound; -inf lanes (masked) and NaN lanes (never inserted) never
// qualify as the bound.
LAYERKNN_AVX512 inline float kth_lane_lower_bound(__m512 m, int k) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, m);
  float bound = -INFINITY;
  for (int i = 0; i < 16; ++i) {
    const __mmask16 reach = _mm512_cmp_ps_mask(m, _mm512_set1_ps(lanes[i]), _CMP_GE_OQ);
    if (__builtin_popcount(reach) >= k && lanes[i] > bound) bound = lanes[i];
  }
  return bound;
}

// Row pass into a list that does not yet hold k keys (the first tile a row meets, where most
// inserts of a plain scan happen: every early key sets a new record): at least k entries of the
// line are >= B = kth_lane_lower_bound, so once the line is in, the list's k-th best is >= B and
// its threshold >= lower_difference(B, window); entries below that would be dropped anyway and
// can never enter the k best, so they are skipped up front. The surviving candidates, the k
// best keys and hence the final threshold are unchanged; only dead inserts are saved.
LAYERKNN_AVX512 inline float fresh_row_floor(const float* line, int cols, int r, const __m512 lr,
                                             const ScanTarget& t, int k) {
  __m512 lane_max = _mm512_set1_ps(-INFINITY);
  for (int c = t.upper_only ? r / 16 * 16 : 0; c < cols; c += 16) {
    const __mmask16 valid = row_pass_mask(c, cols, r, t);
    __m512 v = _mm512_loadu_ps(line + c);
    if (t.l2_row) {  // the same key arithmetic as scan_tile
      const __m512 norms = _mm512_add_ps(lr, _mm512_maskz_loadu_ps(valid, t.l2_col + c));
      v = _mm512_sub_ps(_mm512_add_ps(v, v), norms);
    }
    lane_max = _mm512_mask_max_ps(lane_max, valid, lane_max, v);
  }
  const float bound = kth_lane_lower_bound(lane_max, k);
  return bound > -INFINITY ? lower_difference(bound, t.windows[t.row_list + r]) : -INFINITY;
}

// kUpper == t.upper_only, fixed at compile time so ordinary tiles pay nothing for it.
template <bool kUpper>
LAYERKNN_AVX512 void scan_tile_impl(float* tile, int64_t lds, int rows, int cols,
                                    const ScanTarget& t) {
  CandidateLists& lists = *t.lists;
  const float* thr = lists.thresholds();
  const float* thr_col = thr + t.col_list;
  for (int r = 0; r < rows; ++r) {
    float* line = tile + r * lds;
    const __m512 lr = _mm512_set1_ps(t.l2_row ? t.l2_row[r] : 0.f);
    const bool row_pass = t.row_list >= 0;
    const bool fresh_row = row_pass && lists.sorted_mode() &&
                           lists.best_count(t.row_list + r) < lists.k();
    const float row_floor = fresh_row ? fresh_row_floor(line, cols, r, lr, t, lists.k())
                                      : -INFINITY;
    for (int c = kUpper ? r / 16 * 16 : 0; c < cols; c += 16) {
      __mmask16 valid;
      if (kUpper) {
        valid = column_pass_mask(c, cols, r, t);
      } else {
        valid = tail_mask(cols - c);
        if (t.skip_diagonal && r >= c && r < c + 16) valid &= __mmask16(~(1u << (r - c)));
      }
      __m512 v = _mm512_loadu_ps(line + c);
      if (t.l2_row) {
        const __m512 norms = _mm512_add_ps(lr, _mm512_maskz_loadu_ps(valid, t.l2_col + c));
        v = _mm512_sub_ps(_mm512_add_ps(v, v), norms);
        _mm512_storeu_ps(line + c, v);
      }
      const __mmask16 mc =
          _mm512_mask_cmp_ps_mask(valid, v, _mm512_maskz_loadu_ps(valid, thr_col + c), _CMP_GE_OQ);
      for (unsigned bits = mc; bits; bits &= bits - 1) {
        const int cc = c + __builtin_ctz(bits);
        insert(lists, t.col_list + cc, line[cc], t.row_id + r, t.windows[t.col_list + cc]);
      }
      if (row_pass) {
        const __m512 tr = _mm512_set1_ps(std::max(thr[t.row_list + r], row_floor));
        const __mmask16 row_valid = kUpper ? row_pass_mask(c, cols, r, t) : valid;
        const __mmask16 mr = _mm512_mask_cmp_ps_mask(row_valid, v, tr, _CMP_GE_OQ);
        for (unsigned bits = mr; bits; bits &= bits - 1) {
          const int cc = c + __builtin_ctz(bits);
          insert(lists, t.row_list + r, line[cc], t.col_id + cc, t.windows[t.row_list + r]);
        }
      }
    }
  }
}

LAYERKNN_AVX512 void scan_tile(float* tile, int64_t lds, int rows, int cols,
                               const ScanTarget& t) {
  if (t.upper_only) {
    scan_tile_impl<true>(tile, lds, rows, cols, t);
  } else {
    scan_tile_impl<false>(tile, lds, rows, cols, t);
  }
}

// ---- bf16 packing and GEMM -------------------------------------------------------------------

// 16 floats (x * scale, masked) -> 16 bf16, round to nearest even, as the GEMM will see them.
LAYERKNN_AVX512BF16 inline __m256i to_bf16(const float* x, __mmask16 m, __m512 scale) {
  const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x), scale);
  return (__m256i)_mm512_cvtneps_pbh(v);
}

LAYERKNN_AVX512BF16 inline __m512 from_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Adds packed[kBf16]: the norm of the bf16 operand and its distance from x * scale.
LAYERKNN_AVX512BF16 void packing_stats_bf16(const float* x, int64_t d, RowStats* stats) {
  const __m512 s = _mm512_set1_ps(stats->scale);
  __m512d packed0 = _mm512_setzero_pd(), packed1 = packed0, err0 = packed0, err1 = packed0;
  for (int64_t t = 0; t < d; t += 16) {
    const __mmask16 m = tail_mask(d - t);
    const __m512 exact = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + t), s);
    const __m512 packed = from_bf16(to_bf16(x + t, m, s));
    const __m512d x_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(exact));
    const __m512d x_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(exact, 1));
    const __m512d p_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(packed));
    const __m512d p_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(packed, 1));
    const __m512d e_lo = _mm512_sub_pd(p_lo, x_lo);
    const __m512d e_hi = _mm512_sub_pd(p_hi, x_hi);
    packed0 = _mm512_fmadd_pd(p_lo, p_lo, packed0);
    packed1 = _mm512_fmadd_pd(p_hi, p_hi, packed1);
    err0 = _mm512_fmadd_pd(e_lo, e_lo, err0);
    err1 = _mm512_fmadd_pd(e_hi, e_hi, err1);
  }
  stats->packed[kBf16] = {std::sqrt(reduce_lanes_pd(packed0, packed1)),
                          std::sqrt(reduce_lanes_pd(err0, err1))};
}

// Transposes a 16 x 16 block of 32-bit elements in place: v[i] lane j <-> v[j] lane i.
// Within each 128-bit lane, 32-bit then 64-bit unpacks gather column c of four rows; two
// rounds of 128-bit lane shuffles then join the four row quarters of each column.
LAYERKNN_AVX512 inline void transpose_16x16(__m512i v[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + c] lane L: column 4L + c of rows 4i..4i+3
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44);   // lanes 0,1 | 0,1
    const __m512i x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);   // lanes 2,3 | 2,3
    const __m512i y0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i y1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    v[c] = _mm512_shuffle_i32x4(x0, y0, 0x88);       // lane 0 of each quarter
    v[4 + c] = _mm512_shuffle_i32x4(x0, y0, 0xDD);   // lane 1
    v[8 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);   // lane 2
    v[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xDD);  // lane 3
  }
}

// Vector side: [panel][dpad/2][48] of 32-bit bf16 pairs. Sixteen rows at a time are converted
// (16 pairs each) and transposed, so each store writes one pair of sixteen rows.
LAYERKNN_AVX512BF16 void pack_vector_side_bf16(const float* src, int64_t count, int64_t d,
                                               const float* scale, int64_t dpad, void* dst_) {
  uint32_t* dst = static_cast<uint32_t*>(dst_);
  const int64_t pairs = dpad / 2;
  const int64_t panels = (count + kNr - 1) / kNr;
  for (int64_t p = 0; p < panels; ++p) {
    uint32_t* panel = dst + p * kNr * pairs;
    const int64_t rows = count - p * kNr < kNr ? count - p * kNr : kNr;
    for (int64_t g = 0; g < kNr; g += 16) {  // rows g..g+15 of the panel (zeros past `rows`)
      for (int64_t t = 0; t < dpad; t += 32) {  // 32 features = 16 pairs per step
        const int64_t left = d - t;
        const __mmask16 lo_mask = tail_mask(left > 0 ? left : 0);
        const __mmask16 hi_mask = tail_mask(left > 16 ? left - 16 : 0);
        __m512i v[16];
        for (int i = 0; i < 16; ++i) {
          if (g + i >= rows) {
            v[i] = _mm512_setzero_si512();
            continue;
          }
          const int64_t r = p * kNr + g + i;
          const float* row = src + r * d + t;
          const __m512 s = _mm512_set1_ps(scale ? scale[r] : 1.f);
          const __m256i lo = to_bf16(row, lo_mask, s);
          const __m256i hi = to_bf16(row + 16, hi_mask, s);
          v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        }
        transpose_16x16(v);
        const int64_t here = std::min<int64_t>(16, pairs - t / 2);
        for (int64_t j = 0; j < here; ++j)
          _mm512_storeu_si512(panel + (t / 2 + j) * kNr + g, v[j]);
      }
    }
  }
}

// Broadcast side: [round_up(count, 8)][dpad] bf16, row-major.
LAYERKNN_AVX512BF16 void pack_broadcast_side_bf16(const float* src, int64_t count, int64_t d,
                                                  const float* scale, int64_t dpad, void* dst_) {
  uint16_t* dst = static_cast<uint16_t*>(dst_);
  const int64_t rows = (count + kMr - 1) / kMr * kMr;
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* out = dst + r * dpad;
    if (r >= count) {
      std::memset(out, 0, sizeof(uint16_t) * dpad);
      continue;
    }
    const __m512 s = _mm512_set1_ps(scale ? scale[r] : 1.f);
    for (int64_t t = 0; t < dpad; t += 16) {
      const int64_t left = d - t;
      const __m256i h = to_bf16(src + r * d + t, tail_mask(left > 0 ? left : 0), s);
      _mm256_mask_storeu_epi16(out + t, tail_mask(dpad - t), h);
    }
  }
}

LAYERKNN_AVX512BF16 void gemm_bf16(const void* broadcast_, int64_t rows_pad, const void* vector_,
                                   int64_t cols_pad, int64_t dpad, float* tile, int64_t lds,
                                   const TileScales*) {
  const uint32_t* broadcast = static_cast<const uint32_t*>(broadcast_);  // [rows][dpad/2] pairs
  const uint32_t* vector = static_cast<const uint32_t*>(vector_);
  const int64_t pairs = dpad / 2;
  const int64_t chunk = chunk_steps(pairs);
  for (int64_t k0 = 0; k0 < pairs; k0 += chunk) {
    const int64_t k1 = std::min(pairs, k0 + chunk);
    for (int64_t c0 = 0; c0 < cols_pad; c0 += kNr) {
      const uint32_t* panel = vector + c0 * pairs;  // [pairs][48]
      for (int64_t r0 = 0; r0 < rows_pad; r0 += kMr) {
        const uint32_t* a = broadcast + r0 * pairs;
        __m512 acc[kMr][3];
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
          float* out = tile + (r0 + r) * lds + c0;
          if (k0 == 0) {
            acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
          } else {
            acc[r][0] = _mm512_loadu_ps(out);
            acc[r][1] = _mm512_loadu_ps(out + 16);
            acc[r][2] = _mm512_loadu_ps(out + 32);
          }
        }
        const uint32_t* b = panel + k0 * kNr;
        for (int64_t t = k0; t < k1; ++t, b += kNr) {
          const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
          const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
          const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 32);
#pragma GCC unroll 8
          for (int r = 0; r < kMr; ++r) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[r * pairs + t]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], av, b2);
          }
        }
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
          float* out = tile + (r0 + r) * lds + c0;
          _mm512_storeu_ps(out, acc[r][0]);
          _mm512_storeu_ps(out + 16, acc[r][1]);
          _mm512_storeu_ps(out + 32, acc[r][2]);
        }
      }
    }
  }
}

// ---- int8 packing and GEMM -------------------------------------------------------------------

// A row x * scale is stored as step * q: integer codes q = round(x * quant_scale) in
// [-127, 127], with quant_scale = scale * 127 / max |x * scale| and step = max |x * scale| / 127,
// one of each per row. Packing is handed quant_scale in place of the row scale, so statistics
// and packing agree on every code without a second look at the row's maximum. VPDPBUSD
// multiplies unsigned by signed bytes, so the broadcast side stores q + 128 (1..255) and the
// GEMM subtracts the 128 * sum(q) this adds to every product with a vector-side row. Sums of
// code products are exact in int32 (for dpad <= kMaxInt8Features), so a tile entry's only
// roundings are the conversion to float and the two scalings by the rows' steps.

// Codes of 16 features x[0..15] (lanes outside m are 0), as int32 in [-127, 127].
LAYERKNN_AVX512 inline __m512i quantise(const float* x, __mmask16 m, __m512 quant_scale) {
  const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x), quant_scale);
  const __m512i q = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
}

// Mask of the features of x[t..t+15] inside a row of d (none past its end).
LAYERKNN_AVX512 inline __mmask16 feature_mask(int64_t d, int64_t t) {
  return tail_mask(d - t > 0 ? d - t : 0);
}

// Adds packed[kInt8] (norm of step * q and its distance from x * scale), quant_step,
// quant_scale and quant_sum to stats that row_stats filled for the same row.
LAYERKNN_AVX512 void packing_stats_int8(const float* x, int64_t d, RowStats* stats) {
  const __m512 s = _mm512_set1_ps(stats->scale);
  __m512 peak = _mm512_setzero_ps();
  for (int64_t t = 0; t < d; t += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(d - t), x + t), s);
    peak = _mm512_max_ps(peak, _mm512_abs_ps(v));
  }
  const float max_abs = _mm512_reduce_max_ps(peak);
  stats->quant_step = max_abs / 127.f;
  stats->quant_scale = max_abs > 0.f ? stats->scale * (127.f / max_abs) : 0.f;
  const __m512 quant_scale = _mm512_set1_ps(stats->quant_scale);
  const __m512d step = _mm512_set1_pd(stats->quant_step);  // step * q is exact in float64
  __m512d packed0 = _mm512_setzero_pd(), packed1 = packed0, err0 = packed0, err1 = packed0;
  __m512i sum = _mm512_setzero_si512();
  for (int64_t t = 0; t < d; t += 16) {
    const __mmask16 m = tail_mask(d - t);
    const __m512 exact = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + t), s);
    const __m512i q = quantise(x + t, m, quant_scale);
    sum = _mm512_add_epi32(sum, q);
    const __m512d p_lo = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(q)), step);
    const __m512d p_hi = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(q, 1)), step);
    const __m512d e_lo = _mm512_sub_pd(p_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(exact)));
    const __m512d e_hi = _mm512_sub_pd(p_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(exact, 1)));
    packed0 = _mm512_fmadd_pd(p_lo, p_lo, packed0);
    packed1 = _mm512_fmadd_pd(p_hi, p_hi, packed1);
    err0 = _mm512_fmadd_pd(e_lo, e_lo, err0);
    err1 = _mm512_fmadd_pd(e_hi, e_hi, err1);
  }
  stats->packed[kInt8] = {std::sqrt(reduce_lanes_pd(packed0, packed1)),
                          std::sqrt(reduce_lanes_pd(err0, err1))};
  stats->quant_sum = _mm512_reduce_add_epi32(sum);
}

// Vector side: [panel][dpad/4][48] of 32-bit quads of signed codes. Sixteen rows at a time are
// quantised (64 features = 16 quads each) and transposed, so each store writes one quad of
// sixteen rows. quant_scale [count]: each row's quant_scale.
LAYERKNN_AVX512 void pack_vector_side_int8(const float* src, int64_t count, int64_t d,
                                           const float* quant_scale, int64_t dpad, void* dst_) {
  uint32_t* dst = static_cast<uint32_t*>(dst_);
  const int64_t quads = dpad / 4;
  const int64_t panels = (count + kNr - 1) / kNr;
  for (int64_t p = 0; p < panels; ++p) {
    uint32_t* panel = dst + p * kNr * quads;
    const int64_t rows = count - p * kNr < kNr ? count - p * kNr : kNr;
    for (int64_t g = 0; g < kNr; g += 16) {  // rows g..g+15 of the panel (zeros past `rows`)
      __m512 scales[16];
      for (int i = 0; i < 16 && g + i < rows; ++i) scales[i] = _mm512_set1_ps(quant_scale[p * kNr + g + i]);
      for (int64_t t = 0; t < dpad; t += 64) {  // 64 features = 16 quads per step
        __m512i v[16];
        for (int i = 0; i < 16; ++i) {
          if (g + i >= rows) {
            v[i] = _mm512_setzero_si512();
            continue;
          }
          const float* row = src + (p * kNr + g + i) * d;
          __m128i bytes[4];
          for (int j = 0; j < 4; ++j) {
            const int64_t at = t + 16 * j;
            bytes[j] = _mm512_cvtepi32_epi8(quantise(row + at, feature_mask(d, at), scales[i]));
          }
          v[i] = _mm512_inserti32x4(_mm512_castsi128_si512(bytes[0]), bytes[1], 1);
          v[i] = _mm512_inserti32x4(v[i], bytes[2], 2);
          v[i] = _mm512_inserti32x4(v[i], bytes[3], 3);
        }
        transpose_16x16(v);
        const int64_t here = std::min<int64_t>(16, quads - t / 4);
        for (int64_t j = 0; j < here; ++j)
          _mm512_storeu_si512(panel + (t / 4 + j) * kNr + g, v[j]);
      }
    }
  }
}

// Broadcast side: [round_up(count, 8)][dpad] unsigned bytes q + 128, row-major (padding
// features and rows hold 128, the code 0). quant_scale [count]: each row's quant_scale.
LAYERKNN_AVX512 void pack_broadcast_side_int8(const float* src, int64_t count, int64_t d,
                                              const float* quant_scale, int64_t dpad, void* dst_) {
  uint8_t* dst = static_cast<uint8_t*>(dst_);
  const int64_t rows = (count + kMr - 1) / kMr * kMr;
  const __m512i bias = _mm512_set1_epi32(128);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* out = dst + r * dpad;
    if (r >= count) {
      std::memset(out, 128, dpad);
      continue;
    }
    const float* row = src + r * d;
    const __m512 scale = _mm512_set1_ps(quant_scale[r]);
    for (int64_t t = 0; t < dpad; t += 16) {
      const __m512i u = _mm512_add_epi32(quantise(row + t, feature_mask(d, t), scale), bias);
      _mm_mask_storeu_epi8(out + t, tail_mask(dpad - t), _mm512_cvtepi32_epi8(u));
    }
  }
}

// Like gemm_bf16 with quads of bytes and VPDPBUSD; between feature chunks the tile holds int32
// partial sums, and the last chunk converts them to scores with `scales`.
LAYERKNN_AVX512VNNI void gemm_int8(const void* broadcast_, int64_t rows_pad, const void* vector_,
                                   int64_t cols_pad, int64_t dpad, float* tile, int64_t lds,
                                   const TileScales* scales) {
  const uint32_t* broadcast = static_cast<const uint32_t*>(broadcast_);  // [rows][dpad/4] quads
  const uint32_t* vector = static_cast<const uint32_t*>(vector_);
  int32_t* partial = reinterpret_cast<int32_t*>(tile);
  const int64_t quads = dpad / 4;
  const int64_t chunk = chunk_steps(quads);
  for (int64_t k0 = 0; k0 < quads; k0 += chunk) {
    const int64_t k1 = std::min(quads, k0 + chunk);
    const bool last = k1 == quads;
    for (int64_t c0 = 0; c0 < cols_pad; c0 += kNr) {
      const uint32_t* panel = vector + c0 * quads;  // [quads][48]
      for (int64_t r0 = 0; r0 < rows_pad; r0 += kMr) {
        const uint32_t* a = broadcast + r0 * quads;
        __m512i acc[kMr][3];
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
          const int32_t* in = partial + (r0 + r) * lds + c0;
          if (k0 == 0) {
            acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_si512();
          } else {
            acc[r][0] = _mm512_loadu_si512(in);
            acc[r][1] = _mm512_loadu_si512(in + 16);
            acc[r][2] = _mm512_loadu_si512(in + 32);
          }
        }
        const uint32_t* b = panel + k0 * kNr;
        for (int64_t t = k0; t < k1; ++t, b += kNr) {
          const __m512i b0 = _mm512_loadu_si512(b);
          const __m512i b1 = _mm512_loadu_si512(b + 16);
          const __m512i b2 = _mm512_loadu_si512(b + 32);
#pragma GCC unroll 8
          for (int r = 0; r < kMr; ++r) {
            const __m512i av = _mm512_set1_epi32(int(a[r * quads + t]));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
            acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], av, b2);
          }
        }
        if (!last) {
#pragma GCC unroll 8
          for (int r = 0; r < kMr; ++r) {
            int32_t* out = partial + (r0 + r) * lds + c0;
            _mm512_storeu_si512(out, acc[r][0]);
            _mm512_storeu_si512(out + 16, acc[r][1]);
            _mm512_storeu_si512(out + 32, acc[r][2]);
          }
          continue;
        }
        __m512i offset[3];
        __m512 col_scale[3];
#pragma GCC unroll 3
        for (int v = 0; v < 3; ++v) {
          offset[v] = _mm512_loadu_si512(scales->col_offset + c0 + 16 * v);
          col_scale[v] = _mm512_loadu_ps(scales->col_scale + c0 + 16 * v);
        }
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
          const __m512 row_scale = _mm512_set1_ps(scales->row_scale[r0 + r]);
#pragma GCC unroll 3
          for (int v = 0; v < 3; ++v) {
            const __m512 exact_sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], offset[v]));
            _mm512_storeu_ps(tile + (r0 + r) * lds + c0 + 16 * v,
                             _mm512_mul_ps(_mm512_mul_ps(exact_sum, col_scale[v]), row_scale));
          }
        }
      }
    }
  }
}

const KernelSet kAvx512 = {"avx512",  kMr,       kNr,       1,         4,
                           kFp32,     row_stats, nullptr,   pack_vector_side,
                           pack_broadcast_side,  gemm,      scan_tile, dot_batch, sqdist_batch, 1.};

const KernelSet kAvx512Bf16 = {"avx512-bf16",         kMr,       kNr,       2,
                               2,                     kBf16,     row_stats, packing_stats_bf16,
                               pack_vector_side_bf16, pack_broadcast_side_bf16,
                               gemm_bf16,             scan_tile, dot_batch, sqdist_batch, 2.};

const KernelSet kAvx512Int8 = {"avx512-int8",         kMr,       kNr,       4,
                               1,                     kInt8,     row_stats, packing_stats_int8,
                               pack_vector_side_int8, pack_broadcast_side_int8,
                               gemm_int8,             scan_tile, dot_batch, sqdist_batch, 4.};

}  // namespace

const KernelSet* avx512_kernels() { return &kAvx512; }
const KernelSet* avx512_bf16_kernels() { return &kAvx512Bf16; }
const KernelSet* avx512_int8_kernels() { return &kAvx512Int8; }

}  // namespace layerknn::cpu

#else  // not x86 (see arch.h)

namespace layerknn::cpu {
const KernelSet* avx512_kernels() { return nullptr; }
const KernelSet* avx512_bf16_kernels() { return nullptr; }
const KernelSet* avx512_int8_kernels() { return nullptr; }
}  // namespace layerknn::cpu

#endif
