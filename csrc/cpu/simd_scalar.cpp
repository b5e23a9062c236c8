// Portable kernels of the CPU k-NN engine (see knn_kernels.h): plain C++ that runs on any CPU and
// doubles as the readable specification of the SIMD tables. The exact score is the shared
// definition of common/exact_score.h (16-lane fused-multiply-add layout and halving tree, as the
// vector versions), so every table and the CUDA engine return the same bits; the GEMM is a
// small register-blocked loop that compilers vectorise with SSE2.
#include <cmath>

#include "common/exact_score.h"
#include "cpu/knn_kernels.h"
#include "cpu/pack_fp32.h"

namespace layerknn::cpu {
namespace {

constexpr int kMr = 4;
constexpr int kNr = 8;

// Sum of squares in float64 of x * scale (rounded to fp32 first): the shared definition.
double sum_squares(const float* x, int64_t d, float scale) { return exact::sq_norm(x, d, scale); }

void row_stats(const float* x, int64_t d, bool normalise, RowStats* out) {
  fp32_row_stats([](const float* v, int64_t n, float s) { return sum_squares(v, n, s); }, x, d,
                 normalise, out);
}

void pack_vector_side(const float* src, int64_t count, int64_t d, const float* scale,
                      int64_t dpad, void* dst) {
  pack_fp32_vector_side<kNr>(src, count, d, scale, dpad, static_cast<float*>(dst));
}

void pack_broadcast_side(const float* src, int64_t count, int64_t d, const float* scale,
                         int64_t dpad, void* dst) {
  pack_fp32_broadcast_side<kMr>(src, count, d, scale, dpad, static_cast<float*>(dst));
}

void gemm(const void* broadcast_, int64_t rows_pad, const void* vector_, int64_t cols_pad,
          int64_t dpad, float* tile, int64_t lds, const TileScales*) {
  const float* broadcast = static_cast<const float*>(broadcast_);
  const float* vector = static_cast<const float*>(vector_);
  for (int64_t c0 = 0; c0 < cols_pad; c0 += kNr) {
    const float* panel = vector + c0 * dpad;  // [dpad][kNr]
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kMr) {
      float acc[kMr][kNr] = {};
      for (int64_t t = 0; t < dpad; ++t) {
        for (int r = 0; r < kMr; ++r) {
          const float a = broadcast[(r0 + r) * dpad + t];
          for (int c = 0; c < kNr; ++c) acc[r][c] += a * panel[t * kNr + c];
        }
      }
      for (int r = 0; r < kMr; ++r)
        for (int c = 0; c < kNr; ++c) tile[(r0 + r) * lds + c0 + c] = acc[r][c];
    }
  }
}

void scan_tile(float* tile, int64_t lds, int rows, int cols, const ScanTarget& t) {
  CandidateLists& lists = *t.lists;
  const float* thr = lists.thresholds();
  for (int r = 0; r < rows; ++r) {
    float* line = tile + r * lds;
    for (int c = t.upper_only ? r : 0; c < cols; ++c) {
      if (t.l2_row) {
        const float twice = line[c] + line[c];
        line[c] = twice - (t.l2_row[r] + t.l2_col[c]);
      }
      if (t.skip_diagonal && r == c) continue;
      const float v = line[c];
      if (v >= thr[t.col_list + c]) lists.insert(t.col_list + c, v, t.row_id + r, t.windows[t.col_list + c]);
      if (t.row_list >= 0 && !(t.upper_only && c == r) && v >= thr[t.row_list + r])
        lists.insert(t.row_list + r, v, t.col_id + c, t.windows[t.row_list + r]);
    }
  }
}

// The exact score, literally the shared definition (common/exact_score.h) that the SIMD tables
// vectorise and the CUDA engine's re-rank kernel runs.
void dot_batch(const float* a, float sa, const float* const* b, const float* sb, int count,
               int64_t d, float* out) {
  for (int q = 0; q < count; ++q) out[q] = exact::dot(a, sa, b[q], sb[q], d);
}

void sqdist_batch(const float* a, const float* const* b, int count, int64_t d, float* out) {
  for (int q = 0; q < count; ++q) out[q] = exact::sqdist(a, b[q], d);
}

const KernelSet kScalar = {"scalar",          kMr,          kNr,       1,         4,
                           kFp32,             row_stats,    nullptr,    pack_vector_side,
                           pack_broadcast_side, gemm,       scan_tile, dot_batch, sqdist_batch, 1.};

}  // namespace

const KernelSet* scalar_kernels() { return &kScalar; }

}  // namespace layerknn::cpu
