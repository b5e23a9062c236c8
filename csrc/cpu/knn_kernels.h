// The SIMD kernels behind the CPU k-NN engine, as one table of function pointers per instruction
// set (scalar, AVX2, AVX-512, AVX-512 with BF16), chosen once per call at run time. Each table
// packs row blocks into GEMM panels, multiplies them into an approximate score tile, scans the
// tile against per-row thresholds, and computes the one exact score function that defines the
// engine's results (identical bits on every table, so the SIMD level never changes an answer).
#pragma once
#include <cmath>
#include <cstdint>

#include "cpu/topk_candidates.h"

namespace layerknn::cpu {

// Where a scanned score tile goes. Column pass: entry (r, c) is offered to list row
// col_list + c as candidate row_id + r. Row pass (row_list >= 0): entry (r, c) is offered to
// list row row_list + r as candidate col_id + c. With l2_row/l2_col set, each entry is first
// rewritten as the squared-L2 key 2*tile - (l2_row[r] + l2_col[c]). With upper_only (a
// self-join diagonal tile whose GEMM skipped the panels below the diagonal, so entries c < r
// hold stale values), only c >= r is read: the column pass takes c >= r and the row pass c > r,
// which offers every pair of the block once in each direction.
struct ScanTarget {
  CandidateLists* lists = nullptr;
  float window = 0.f;          // 2 x key error bound of this layer
  int64_t col_list = 0;        // list row of tile column 0
  int64_t row_list = -1;       // list row of tile row 0, or -1 for no row pass
  int32_t col_id = 0;          // candidate id of tile column 0
  int32_t row_id = 0;          // candidate id of tile row 0
  const float* l2_row = nullptr;  // [rows] fp32 squared norms, or nullptr (not squared L2)
  const float* l2_col = nullptr;  // [cols]
  bool skip_diagonal = false;  // drop r == c (self-join diagonal tile, self excluded)
  bool upper_only = false;     // read only c >= r (see above); needs row_list == col_list
};

// What the engine needs to know about one input row (computed once per layer).
struct RowStats {
  float scale = 1.f;          // 1/|x| in fp32 for cosine (the row is used as x * scale), else 1
  float sq_norm = 0.f;        // fp32 rounding of the float64 |x|^2 (squared L2 keys)
  double norm = 0.;           // |x * scale|, the fp32 operand the exact score sees
  double packed_norm = 0.;    // |packed operand| (the bf16 rounding of x * scale, or the same)
  double packing_error = 0.;  // |packed operand - x * scale|: 0 for fp32 packing
};

// RowStats of an fp32-packed row, given one instruction set's float64 sum of (scale*x)^2.
// Shared by every kernel set so they all derive scale and norms by the same formula.
template <class SumSquares>
inline void fp32_row_stats(SumSquares sum_squares, const float* x, int64_t d, bool normalise,
                           RowStats* out) {
  const double sq = sum_squares(x, d, 1.f);
  const float scale = normalise ? (sq > 0 ? float(1.0 / std::sqrt(sq)) : 0.f) : 1.f;
  out->scale = scale;
  out->sq_norm = float(sq);
  out->norm = normalise ? std::sqrt(sum_squares(x, d, scale)) : std::sqrt(sq);
  out->packed_norm = out->norm;
  out->packing_error = 0;
}

// One instruction set's kernels. "Broadcast side" rows are packed row-major; "vector side" rows
// are packed column-interleaved into panels of `nr` rows. Packed operands hold `group` features
// per element (1 for fp32, 2 for bf16 pairs) and every feature dimension is padded to `dpad`.
struct KernelSet {
  const char* name;  // "scalar", "avx2", "avx512", "avx512-bf16"
  int mr;            // broadcast rows per micro-tile
  int nr;            // vector-side rows per micro-tile (panel width)
  int group;         // features per packed element: 1 (fp32) or 2 (bf16 pairs)
  int elem_bytes;    // bytes per packed feature: 4 or 2
  bool low_precision;

  // Fills stats for one row x [d]; normalise selects cosine scaling.
  void (*row_stats)(const float* x, int64_t d, bool normalise, RowStats* out);

  // src [count, d] rows, each times scale[r] -> dst [ceil(count/nr)][dpad/group][nr][group],
  // zero padded to whole panels.
  void (*pack_vector_side)(const float* src, int64_t count, int64_t d, const float* scale,
                           int64_t dpad, void* dst);
  // src [count, d] rows, each times scale[r] -> dst [round_up(count, mr)][dpad], zero padded.
  void (*pack_broadcast_side)(const float* src, int64_t count, int64_t d, const float* scale,
                              int64_t dpad, void* dst);
  // tile [rows_pad, lds] = broadcast [rows_pad, dpad] . vector^T [cols_pad, dpad] (packed
  // operands; rows_pad a multiple of mr, cols_pad of nr, lds >= cols_pad).
  void (*gemm)(const void* broadcast, int64_t rows_pad, const void* vector, int64_t cols_pad,
               int64_t dpad, float* tile, int64_t lds);

  // Scans tile [rows, lds] (valid part rows x cols) into candidate lists, inserting as it
  // goes so thresholds rise within the tile. See ScanTarget for what goes where.
  void (*scan_tile)(float* tile, int64_t lds, int rows, int cols, const ScanTarget& target);

  // The exact score: out[q] = sum_t (a[t]*sa) * (b[q][t]*sb[q]) in fp32, accumulated in 16
  // lanes (lane = t mod 16, fused multiply-add) then summed by halving (l += l+8, +4, +2, +1).
  void (*dot_batch)(const float* a, float sa, const float* const* b, const float* sb, int count,
                    int64_t d, float* out);
  // Same lanes and tree for sum_t (a[t] - b[q][t])^2.
  void (*sqdist_batch)(const float* a, const float* const* b, int count, int64_t d, float* out);
};

// Every table compiled into this build for this architecture (nullptr where unavailable);
// callers must also check the CPU supports it (see knn_dispatch in knn_cpu.cpp).
const KernelSet* scalar_kernels();
const KernelSet* avx2_kernels();
const KernelSet* avx512_kernels();
const KernelSet* avx512_bf16_kernels();

}  // namespace layerknn::cpu
