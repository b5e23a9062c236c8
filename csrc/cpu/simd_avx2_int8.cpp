// Int8 tiles for x86-64 CPUs with AVX2 but no AVX-512 VNNI (see knn_kernels.h): the same
// per-row quantisation as the AVX-512 int8 table (codes q = round(x * quant_scale) in
// [-127, 127], step = max |x * scale| / 127), multiplied with VPMADDUBSW + VPMADDWD. VPMADDUBSW
// takes unsigned by signed bytes and saturates each pair sum to int16, so the broadcast code's
// magnitude |a| goes in as the unsigned byte and its sign is moved onto the vector-side code
// (VPSIGNB): |a0| (sign(a0) b0) + |a1| (sign(a1) b1) = a0 b0 + a1 b1, and |a|, |b| <= 127 bound
// each pair sum by 2 * 127^2 = 32258 < 2^15, so nothing saturates. VPMADDWD by ones widens the
// pairs to int32 quads; the sums stay exact (dpad <= kMaxInt8Features), so the int8 windows of
// tile_windows.h hold unchanged. The fp32 statistics, scan and exact scores are the AVX2 table's.
#include "cpu/arch.h"
#include "cpu/knn_kernels.h"

#if LAYERKNN_X86
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#define LAYERKNN_AVX2 __attribute__((target("avx2,fma")))

namespace layerknn::cpu {
namespace {

constexpr int kMr = 4;
constexpr int kNr = 16;
constexpr int64_t kChunk = 256;  // quads per feature chunk (a 16-row panel chunk is 16 KiB)

LAYERKNN_AVX2 inline __m256 load8(const float* x, int64_t left) {
  if (left >= 8) return _mm256_loadu_ps(x);
  if (left <= 0) return _mm256_setzero_ps();
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(x, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), idx));
}

// Codes of x[0..7] (features past `left` are 0), as int32 in [-127, 127]; the conversion rounds
// to nearest even (the default MXCSR mode), as the AVX-512 table's does.
LAYERKNN_AVX2 inline __m256i quantise(const float* x, int64_t left, __m256 quant_scale) {
  const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(load8(x, left), quant_scale));
  return _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

LAYERKNN_AVX2 inline double reduce_pd(__m256d a, __m256d b) {
  const __m256d w = _mm256_add_pd(a, b);
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(w), _mm256_extractf128_pd(w, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

// Adds packed[kInt8] (norm of step * q and its distance from x * scale), quant_step,
// quant_scale and quant_sum to stats that row_stats filled for the same row x [d].
LAYERKNN_AVX2 void packing_stats(const float* x, int64_t d, RowStats* stats) {
  const __m256 s = _mm256_set1_ps(stats->scale);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 peak = _mm256_setzero_ps();
  for (int64_t t = 0; t < d; t += 8)
    peak = _mm256_max_ps(peak, _mm256_and_ps(abs_mask, _mm256_mul_ps(load8(x + t, d - t), s)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, peak);
  const float max_abs = *std::max_element(lanes, lanes + 8);
  stats->quant_step = max_abs / 127.f;
  stats->quant_scale = max_abs > 0.f ? stats->scale * (127.f / max_abs) : 0.f;
  const __m256 quant_scale = _mm256_set1_ps(stats->quant_scale);
  const __m256d step = _mm256_set1_pd(stats->quant_step);  // step * q is exact in float64
  __m256d packed0 = _mm256_setzero_pd(), packed1 = packed0, err0 = packed0, err1 = packed0;
  __m256i sum = _mm256_setzero_si256();
  for (int64_t t = 0; t < d; t += 8) {
    const __m256 exact = _mm256_mul_ps(load8(x + t, d - t), s);
    const __m256i q = quantise(x + t, d - t, quant_scale);
    sum = _mm256_add_epi32(sum, q);
    const __m256d p_lo = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(q)), step);
    const __m256d p_hi = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(q, 1)), step);
    const __m256d e_lo = _mm256_sub_pd(p_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(exact)));
    const __m256d e_hi = _mm256_sub_pd(p_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(exact, 1)));
    packed0 = _mm256_fmadd_pd(p_lo, p_lo, packed0);
    packed1 = _mm256_fmadd_pd(p_hi, p_hi, packed1);
    err0 = _mm256_fmadd_pd(e_lo, e_lo, err0);
    err1 = _mm256_fmadd_pd(e_hi, e_hi, err1);
  }
  stats->packed[kInt8] = {std::sqrt(reduce_pd(packed0, packed1)), std::sqrt(reduce_pd(err0, err1))};
  alignas(32) int32_t sums[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(sums), sum);
  int32_t total = 0;
  for (int32_t v : sums) total += v;
  stats->quant_sum = total;
}

// The codes of row [d] times quant_scale, zero padded to dpad bytes: out [dpad].
LAYERKNN_AVX2 void quantise_row(const float* row, int64_t d, float quant_scale, int64_t dpad,
                                int8_t* out) {
  const __m256 qs = _mm256_set1_ps(quant_scale);
  for (int64_t t = 0; t < dpad; t += 8) {
    const __m256i q = quantise(row + t, d - t, qs);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i b = _mm_packs_epi16(w, w);
    std::memcpy(out + t, &b, static_cast<size_t>(std::min<int64_t>(8, dpad - t)));
  }
}

// Vector side: [panel][dpad/4][16] quads of signed codes (4 bytes each), zero padded.
// quant_scale [count]: each row's quant_scale.
LAYERKNN_AVX2 void pack_vector_side(const float* src, int64_t count, int64_t d,
                                    const float* quant_scale, int64_t dpad, void* dst_) {
  uint32_t* dst = static_cast<uint32_t*>(dst_);
  const int64_t quads = dpad / 4;
  const int64_t panels = (count + kNr - 1) / kNr;
  std::memset(dst, 0, sizeof(uint32_t) * panels * kNr * quads);
  std::vector<int8_t> codes(static_cast<size_t>(dpad) + 8);
  for (int64_t r = 0; r < count; ++r) {
    quantise_row(src + r * d, d, quant_scale[r], dpad, codes.data());
    uint32_t* panel = dst + (r / kNr) * kNr * quads + (r % kNr);
    for (int64_t t = 0; t < quads; ++t) std::memcpy(panel + t * kNr, codes.data() + 4 * t, 4);
  }
}

// Broadcast side: [round_up(count, 4)][dpad] signed codes, row-major, zero padded.
LAYERKNN_AVX2 void pack_broadcast_side(const float* src, int64_t count, int64_t d,
                                       const float* quant_scale, int64_t dpad, void* dst_) {
  int8_t* dst = static_cast<int8_t*>(dst_);
  const int64_t rows = (count + kMr - 1) / kMr * kMr;
  std::memset(dst + count * dpad, 0, static_cast<size_t>((rows - count) * dpad));
  for (int64_t r = 0; r < count; ++r) quantise_row(src + r * d, d, quant_scale[r], dpad, dst + r * dpad);
}

inline int64_t chunk_steps(int64_t steps) {
  const int64_t chunks = (steps + kChunk - 1) / kChunk;
  return chunks <= 1 ? steps : (steps + chunks - 1) / chunks;
}

// a . b over one quad of each of 8 columns, added to acc as int32 (see the file comment).
LAYERKNN_AVX2 inline __m256i quad_dot(__m256i acc, __m256i a_abs, __m256i a, __m256i b) {
  const __m256i pairs = _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(b, a));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// tile [rows_pad, lds] from broadcast [rows_pad][dpad] and vector [cols_pad/16][dpad/4][16]
// codes: int32 partial sums between feature chunks, then float(sum) * col_scale * row_scale.
LAYERKNN_AVX2 void gemm(const void* broadcast_, int64_t rows_pad, const void* vector_,
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
      const uint32_t* panel = vector + c0 * quads;  // [quads][16]
      for (int64_t r0 = 0; r0 < rows_pad; r0 += kMr) {
        const uint32_t* a = broadcast + r0 * quads;
        __m256i acc[kMr][2];
#pragma GCC unroll 4
        for (int r = 0; r < kMr; ++r) {
          const int32_t* in = partial + (r0 + r) * lds + c0;
          if (k0 == 0) {
            acc[r][0] = acc[r][1] = _mm256_setzero_si256();
          } else {
            acc[r][0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in));
            acc[r][1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 8));
          }
        }
        const uint32_t* b = panel + k0 * kNr;
        for (int64_t t = k0; t < k1; ++t, b += kNr) {
          const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
          const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 8));
#pragma GCC unroll 4
          for (int r = 0; r < kMr; ++r) {
            const __m256i av = _mm256_set1_epi32(int(a[r * quads + t]));
            const __m256i aa = _mm256_abs_epi8(av);
            acc[r][0] = quad_dot(acc[r][0], aa, av, b0);
            acc[r][1] = quad_dot(acc[r][1], aa, av, b1);
          }
        }
        if (!last) {
#pragma GCC unroll 4
          for (int r = 0; r < kMr; ++r) {
            int32_t* out = partial + (r0 + r) * lds + c0;
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), acc[r][0]);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), acc[r][1]);
          }
          continue;
        }
        const __m256 col0 = _mm256_loadu_ps(scales->col_scale + c0);
        const __m256 col1 = _mm256_loadu_ps(scales->col_scale + c0 + 8);
#pragma GCC unroll 4
        for (int r = 0; r < kMr; ++r) {
          const __m256 row_scale = _mm256_set1_ps(scales->row_scale[r0 + r]);
          float* out = tile + (r0 + r) * lds + c0;
          _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][0]), col0),
                                              row_scale));
          _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][1]), col1),
                                                  row_scale));
        }
      }
    }
  }
}

// The AVX2 table with these int8 tiles in place of its fp32 ones.
KernelSet make_table() {
  KernelSet t = *avx2_kernels();
  t.name = "avx2-int8";
  t.mr = kMr;
  t.nr = kNr;
  t.group = 4;
  t.elem_bytes = 1;
  t.precision = kInt8;
  // Measured on Zen 3 (EPYC, AVX2): 138 vs 101 GFLOP/s-equivalent for one 192 x 192 x 576 tile
  // against the AVX2 fp32 tiles; the sign, widening and add steps cost issue slots.
  t.speedup = 1.35;
  t.packing_stats = packing_stats;
  t.pack_vector_side = pack_vector_side;
  t.pack_broadcast_side = pack_broadcast_side;
  t.gemm = gemm;
  return t;
}

}  // namespace

const KernelSet* avx2_int8_kernels() {
  static const KernelSet table = make_table();
  return &table;
}

}  // namespace layerknn::cpu

#else

namespace layerknn::cpu {
const KernelSet* avx2_int8_kernels() { return nullptr; }
}  // namespace layerknn::cpu

#endif
