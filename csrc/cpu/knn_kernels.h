// The SIMD kernels behind the CPU k-NN engine, as one table of function pointers per instruction
// set (scalar, AVX2, AVX-512, and AVX-512 with BF16 or VNNI int8 tiles), chosen once per call at
// run time. Each table
// packs row blocks into GEMM panels, multiplies them into an approximate score tile, scans the
// tile against per-row thresholds, and computes the one exact score function that defines the
// engine's results (identical bits on every table, so the SIMD level never changes an answer).
#pragma once
#include <cmath>
#include <cstdint>

#include "common/exact_score.h"
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
  const float* windows = nullptr;  // [list rows] 2 x key error bound of each list row's pairs
  int64_t col_list = 0;        // list row of tile column 0
  int64_t row_list = -1;       // list row of tile row 0, or -1 for no row pass
  int32_t col_id = 0;          // candidate id of tile column 0
  int32_t row_id = 0;          // candidate id of tile row 0
  const float* l2_row = nullptr;  // [rows] fp32 squared norms, or nullptr (not squared L2)
  const float* l2_col = nullptr;  // [cols]
  bool skip_diagonal = false;  // drop r == c (self-join diagonal tile, self excluded)
  bool upper_only = false;     // read only c >= r (see above); needs row_list == col_list
};

// The precisions a tile can be computed in; each doubles the GEMM arithmetic per instruction of
// the one before (fp32 FMA, bf16 pairs by VDPBF16PS, int8 quads by VPDPBUSD).
enum Precision : int { kFp32 = 0, kBf16 = 1, kInt8 = 2, kPrecisions = 3 };

// One row as a packed GEMM operand of some precision (float64 norms).
struct PackedRow {
  double norm = 0.;   // |packed operand|
  double error = 0.;  // |packed operand - x * scale| (0 for fp32 packing)
};

// What the engine needs to know about one input row (computed once per layer).
struct RowStats {
  float scale = 1.f;          // 1/|x| in fp32 for cosine (the row is used as x * scale), else 1
  float sq_norm = 0.f;        // fp32 rounding of the float64 |x|^2 (squared L2 keys)
  double norm = 0.;           // |x * scale|, the fp32 operand the exact score sees: an upper
                              // bound for cosine; otherwise a float64 sum that may lie below it
                              // by ~d 2^-53 relative, which the window's 1e-6 margin absorbs
  PackedRow packed[kPrecisions];  // per precision; filled by row_stats (fp32) + packing_stats
  float quant_step = 0.f;     // int8 packing: the row is stored as quant_step * q, |q| <= 127
  float quant_scale = 0.f;    // int8 packing: q = round(x * quant_scale), clamped to 127
  int32_t quant_sum = 0;      // int8 packing: sum of the row's codes q
};

// RowStats of an fp32-packed row, given one instruction set's float64 sum of (scale*x)^2.
// Shared by every kernel set so they all derive scale and norms by the same formula. The
// norm of x * scale (used only in error bounds) is bounded rather than summed again: each
// fp32 product is within a relative 2^-24 of the exact one, and the float64 sum of d squares
// within d 2^-53, both far inside the 1e-6 margin.
template <class SumSquares>
inline void fp32_row_stats(SumSquares sum_squares, const float* x, int64_t d, bool normalise,
                           RowStats* out) {
  const double sq = sum_squares(x, d, 1.f);
  const float scale = exact::row_scale(sq, normalise);  // common/exact_score.h, as the GPU's
  out->scale = scale;
  out->sq_norm = float(sq);
  out->norm = exact::operand_norm(sq, scale, normalise);
  out->packed[kFp32] = {out->norm, 0.};
}

// Int8 tiles sum up to 4 * dpad/4 products of at most 255 * 127 in int32: exact up to here.
constexpr int64_t kMaxInt8Features = 65536;

// Integer tiles (int8 kernels) hold exact sums of code products; the GEMM turns them into
// scores as tile[r][c] = float(acc[r][c] - col_offset[c]) * col_scale[c] * row_scale[r].
struct TileScales {
  const float* row_scale;     // [rows_pad] broadcast-side quant_step per tile row
  const float* col_scale;     // [cols_pad] vector-side quant_step per tile column
  const int32_t* col_offset;  // [cols_pad] 128 x quant_sum of each vector-side row
};

// One instruction set's kernels. "Broadcast side" rows are packed row-major; "vector side" rows
// are packed column-interleaved into panels of `nr` rows. Packed operands hold `group` features
// per element (1 for fp32, 2 for bf16 pairs) and every feature dimension is padded to `dpad`.
struct KernelSet {
  const char* name;  // "scalar", "avx2", "avx2-int8", "avx512", "avx512-bf16", "avx512-int8"
  int mr;            // broadcast rows per micro-tile
  int nr;            // vector-side rows per micro-tile (panel width)
  int group;         // features per packed element: 1 (fp32), 2 (bf16 pairs), 4 (int8 quads)
  int elem_bytes;    // bytes per packed feature: 4, 2 or 1
  Precision precision;

  // Fills the fp32 stats (scale, norms, packed[kFp32]) of one row x [d]; normalise selects
  // cosine scaling. Every table computes the same values.
  void (*row_stats)(const float* x, int64_t d, bool normalise, RowStats* out);
  // Low-precision tables: adds packed[precision] (and the int8 quant fields) to stats that
  // row_stats filled for the same row. nullptr for fp32 tables.
  void (*packing_stats)(const float* x, int64_t d, RowStats* stats);

  // src [count, d] rows, each times scale[r] -> dst [ceil(count/nr)][dpad/group][nr][group],
  // zero padded to whole panels. (int8 tables: scale[r] is the row's quant_scale, and the
  // packed values are the codes q.)
  void (*pack_vector_side)(const float* src, int64_t count, int64_t d, const float* scale,
                           int64_t dpad, void* dst);
  // src [count, d] rows, each times scale[r] -> dst [round_up(count, mr)][dpad], zero padded.
  void (*pack_broadcast_side)(const float* src, int64_t count, int64_t d, const float* scale,
                              int64_t dpad, void* dst);
  // tile [rows_pad, lds] = broadcast [rows_pad, dpad] . vector^T [cols_pad, dpad] (packed
  // operands; rows_pad a multiple of mr, cols_pad of nr, lds >= cols_pad). scales: the int8
  // dequantisation of this tile's rows and columns (ignored by float tables).
  void (*gemm)(const void* broadcast, int64_t rows_pad, const void* vector, int64_t cols_pad,
               int64_t dpad, float* tile, int64_t lds, const TileScales* scales);

  // Scans tile [rows, lds] (valid part rows x cols) into candidate lists, inserting as it
  // goes so thresholds rise within the tile. See ScanTarget for what goes where.
  void (*scan_tile)(float* tile, int64_t lds, int rows, int cols, const ScanTarget& target);

  // The exact score: out[q] = sum_t (a[t]*sa) * (b[q][t]*sb[q]) in fp32, accumulated in 16
  // lanes (lane = t mod 16, fused multiply-add) then summed by halving (l += l+8, +4, +2, +1).
  void (*dot_batch)(const float* a, float sa, const float* const* b, const float* sb, int count,
                    int64_t d, float* out);
  // Same lanes and tree for sum_t (a[t] - b[q][t])^2.
  void (*sqdist_batch)(const float* a, const float* const* b, int count, int64_t d, float* out);

  // GEMM multiply-adds per cycle of these tiles over the fp32 tiles of the same instruction
  // set (1 for fp32 tables); the cost model's estimate of how much cheaper a tile is.
  double speedup;
  // Features that dpad is a multiple of, where the GEMM needs more than `group` (AMX: one
  // 64-byte tile row); 0 means `group`. See padded_features.
  int dpad_align = 0;
};

// dpad of a table: d padded to whole packed elements (and to the table's dpad_align). The
// packers fill the padding with zero codes, so it adds nothing to a score.
inline int64_t padded_features(int64_t d, const KernelSet& ks) {
  const int64_t align = ks.dpad_align > 0 ? ks.dpad_align : ks.group;
  return (d + align - 1) / align * align;
}

// Every table compiled into this build for this architecture (nullptr where unavailable);
// callers must also check the CPU supports it (see choose_kernels in engine_options.cpp).
const KernelSet* scalar_kernels();
const KernelSet* avx2_kernels();
const KernelSet* avx512_kernels();
const KernelSet* avx512_bf16_kernels();
const KernelSet* avx512_int8_kernels();
const KernelSet* avx2_int8_kernels();  // int8 tiles by VPMADDUBSW (AVX2 CPUs without VNNI)
// The AVX-512 bf16 and int8 tables with AMX tile GEMMs (simd_amx.cpp); usable only where
// amx_usable() (CPU features and the kernel's permission, asked once per process).
const KernelSet* amx_bf16_kernels();
const KernelSet* amx_int8_kernels();
bool amx_usable();

}  // namespace layerknn::cpu
