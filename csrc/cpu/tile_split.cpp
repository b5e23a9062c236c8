// Centring and outlier split of a layer's rows for the tiles (see tile_split.h): the choice of
// centre and split-off features, the centred rows the packing reads, and the fp32 terms added to
// each tile. The vectorised term loop needs AVX2 and FMA; elsewhere (the scalar table, other
// architectures) plain code runs.
#include "cpu/tile_split.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu/arch.h"
#include "cpu/engine_state.h"
#include "cpu/knn_kernels.h"
#include "cpu/tile_windows.h"

#if LAYERKNN_X86
#include <immintrin.h>
#define LAYERKNN_SPLIT_TARGET __attribute__((target("avx2,fma")))
#define LAYERKNN_CENTRE_TARGET __attribute__((target("avx2")))
#else
#define LAYERKNN_SPLIT_TARGET
#define LAYERKNN_CENTRE_TARGET
#endif

namespace layerknn::cpu {

int split_width(int64_t d) { return static_cast<int>(std::min<int64_t>(16, d / 16)); }

void choose_split(const float* x, const float* scale, int64_t rows, int64_t d, int m,
                  LayerSplit* out) {
  std::vector<double> sum(d, 0.);
  std::vector<float> hi(d, -INFINITY), lo(d, INFINITY);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * d;
    const float s = scale[r];
    for (int64_t t = 0; t < d; ++t) {
      const float z = row[t] * s;
      sum[t] += z;
      hi[t] = std::max(hi[t], z);
      lo[t] = std::min(lo[t], z);
    }
  }
  out->mu.assign(d, 0.f);
  double sq = 0.;
  std::vector<double> deviation(d, 0.);
  for (int64_t t = 0; t < d; ++t) {
    out->mu[t] = rows > 0 ? static_cast<float>(sum[t] / double(rows)) : 0.f;
    sq += double(out->mu[t]) * double(out->mu[t]);
    deviation[t] = rows > 0 ? std::max(double(hi[t]) - out->mu[t], out->mu[t] - double(lo[t])) : 0.;
  }
  out->mu_norm = std::sqrt(sq);
  std::vector<double> sorted = deviation;
  if (d > 0) {
    std::nth_element(sorted.begin(), sorted.begin() + d / 2, sorted.end());
    const double median = sorted[d / 2];
    const double largest = *std::max_element(deviation.begin(), deviation.end());
    out->outlying = median > 0. ? largest / median : (largest > 0. ? INFINITY : 1.);
  }
  std::vector<int32_t> order(d);
  std::iota(order.begin(), order.end(), 0);
  m = static_cast<int>(std::min<int64_t>(m, d));
  std::partial_sort(order.begin(), order.begin() + m, order.end(), [&](int32_t a, int32_t b) {
    return deviation[a] > deviation[b] || (deviation[a] == deviation[b] && a < b);
  });
  out->columns.assign(order.begin(), order.begin() + m);
  std::sort(out->columns.begin(), out->columns.end());
  out->keep.assign(d, 1);
  for (int32_t c : out->columns) out->keep[c] = 0;
}

bool worth_splitting(const LayerSplit& split, double peak) {
  return split.m() > 0 && (split.mu_norm >= 0.25 * peak || split.outlying >= 8.);
}

double split_speedup(double speedup, double dpad, int m) {
  return dpad / (dpad / speedup + m + 2);
}

// AVX2 (no FMA: the product is rounded before the subtraction, as the window assumes) on x86,
// where only the int8 tables (AVX2 CPUs and up) call it.
LAYERKNN_CENTRE_TARGET void centre_row(const float* x, float scale, const LayerSplit& split,
                                       int64_t d, float* out) {
  const float* mu = split.mu.data();
  for (int64_t t = 0; t < d; ++t) {
    const float z = x[t] * scale;
    out[t] = z - mu[t];
  }
  for (int32_t c : split.columns) out[c] = 0.f;
}

void centre_rows(const float* x, const float* scale, int64_t count, const LayerSplit& split,
                 int64_t d, float* out) {
  for (int64_t r = 0; r < count; ++r) centre_row(x + r * d, scale[r], split, d, out + r * d);
}

double split_values(const float* x, float scale, const LayerSplit& split, float* v) {
  double sq = 0.;
  for (int s = 0; s < split.m(); ++s) {
    const int32_t c = split.columns[s];
    const float z = x[c] * scale;
    v[s] = z - split.mu[c];
    sq += double(v[s]) * double(v[s]);
  }
  return std::sqrt(sq);
}

void split_side_stats(const float* x, int64_t rows, int64_t r0, int64_t r1, int64_t d,
                      const LayerSplit& split, const KernelSet* int8, const KernelSet* bf16,
                      const KernelSet& exact, RowArrays* side, float* scratch) {
  const int m = split.m();
  constexpr int kBatch = 64;
  const float* batch[kBatch];
  for (int64_t b0 = r0; b0 < r1; b0 += kBatch) {
    const int count = static_cast<int>(std::min<int64_t>(kBatch, r1 - b0));
    for (int q = 0; q < count; ++q) batch[q] = x + (b0 + q) * d;
    exact.dot_batch(split.mu.data(), 1.f, batch, side->scale.data() + b0, count, d,
                    side->shift.data() + b0);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * d;
    const float scale = side->scale[r];
    RowStats& stats = side->stats[r];
    centre_row(row, scale, split, d, scratch);
    RowStats centred;  // scale 1: the centred row is already scaled
    exact.row_stats(scratch, d, false, &centred);
    stats.packed[kFp32] = centred.packed[kFp32];  // |w|, exact operands
    if (int8) {
      int8->packing_stats(scratch, d, &centred);
      stats.packed[kInt8] = centred.packed[kInt8];
      side->qstep[r] = centred.quant_step;
      side->qscale[r] = centred.quant_scale;
      side->qoffset[r] = 128 * centred.quant_sum;
    }
    if (bf16) {
      bf16->packing_stats(scratch, d, &centred);
      stats.packed[kBf16] = centred.packed[kBf16];
    }
    float* v = side->split_v.data() + r * m;
    side->split_norm[r] = split_values(row, scale, split, v);
    for (int s = 0; s < m; ++s) side->split_vt[s * rows + r] = v[s];
  }
}

std::vector<float> split_key_windows(Metric metric, Precision precision, int64_t dpad, int64_t d,
                                     const LayerSplit& split, const RowArrays& x,
                                     const RowArrays& y) {
  OperandNorms ymax;
  double sy = 0.;
  for (size_t j = 0; j < y.stats.size(); ++j) {
    const RowStats& r = y.stats[j];
    ymax.a = std::max(ymax.a, r.norm);
    ymax.p = std::max(ymax.p, r.packed[precision].norm);
    ymax.e = std::max(ymax.e, r.packed[precision].error);
    sy = std::max(sy, y.split_norm[j]);
  }
  std::vector<float> windows(x.stats.size());
  for (size_t i = 0; i < windows.size(); ++i) {
    const RowStats& row = x.stats[i];
    const OperandNorms xi{row.norm, row.packed[precision].norm, row.packed[precision].error};
    windows[i] = split_key_window(metric, precision, dpad, d, split.m(), split.mu_norm, xi, ymax,
                                  x.split_norm[i], sy);
  }
  return windows;
}

#if LAYERKNN_X86
// Thirty-two tile columns from c of R rows (each with its line, shift and v [m]): the row's
// shifts, then each split-off term by a fused multiply-add, in order, in registers (the rows
// share the loads of col_vt); one load and one store of the tile.
template <int R>
LAYERKNN_SPLIT_TARGET inline void split_terms32(float* const* line, int64_t c, const float* shift,
                                                const float* col_shift, const float* const* v,
                                                const float* col_vt, int64_t col_stride, int m) {
  __m256 t[R][4];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m256 sh = _mm256_set1_ps(shift[r]);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      t[r][j] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(line[r] + c + 8 * j), sh),
                              _mm256_loadu_ps(col_shift + c + 8 * j));
  }
  for (int s = 0; s < m; ++s) {
    const float* vc = col_vt + s * col_stride + c;
    const __m256 b[4] = {_mm256_loadu_ps(vc), _mm256_loadu_ps(vc + 8), _mm256_loadu_ps(vc + 16),
                         _mm256_loadu_ps(vc + 24)};
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 vs = _mm256_set1_ps(v[r][s]);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) t[r][j] = _mm256_fmadd_ps(vs, b[j], t[r][j]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(line[r] + c + 8 * j, t[r][j]);
}
#endif

// Columns [c0, cols) of one tile row, one at a time, in the same order.
LAYERKNN_SPLIT_TARGET inline void split_tail(float* line, int64_t c0, int64_t cols, float shift,
                                             const float* col_shift, const float* v,
                                             const float* col_vt, int64_t col_stride, int m) {
  for (int64_t c = c0; c < cols; ++c) {
    float t = (line[c] + shift) + col_shift[c];
    for (int s = 0; s < m; ++s) t += v[s] * col_vt[s * col_stride + c];
    line[c] = t;
  }
}

LAYERKNN_SPLIT_TARGET void add_split_terms(float* tile, int64_t lds, int64_t rows, int64_t cols,
                                           const float* row_shift, const float* col_shift,
                                           const float* row_v, const float* col_vt,
                                           int64_t col_stride, int m) {
  int64_t r = 0;
#if LAYERKNN_X86
  const int64_t wide = cols / 32 * 32;
  for (; r + 3 <= rows; r += 3) {
    float* const line[3] = {tile + r * lds, tile + (r + 1) * lds, tile + (r + 2) * lds};
    const float* const v[3] = {row_v + r * m, row_v + (r + 1) * m, row_v + (r + 2) * m};
    for (int64_t c = 0; c < wide; c += 32)
      split_terms32<3>(line, c, row_shift + r, col_shift, v, col_vt, col_stride, m);
    for (int q = 0; q < 3; ++q)
      split_tail(line[q], wide, cols, row_shift[r + q], col_shift, v[q], col_vt, col_stride, m);
  }
  for (; r < rows; ++r) {
    float* const line[1] = {tile + r * lds};
    const float* const v[1] = {row_v + r * m};
    for (int64_t c = 0; c < wide; c += 32)
      split_terms32<1>(line, c, row_shift + r, col_shift, v, col_vt, col_stride, m);
    split_tail(line[0], wide, cols, row_shift[r], col_shift, v[0], col_vt, col_stride, m);
  }
#endif
  for (; r < rows; ++r)  // off x86: every row here
    split_tail(tile + r * lds, 0, cols, row_shift[r], col_shift, row_v + r * m, col_vt,
               col_stride, m);
}

}  // namespace layerknn::cpu
