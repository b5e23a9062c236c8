// Centred, outlier-split operands for the CPU k-NN engine's tiles, fp32, bf16 or int8
// (inner-product keys: cosine and ip). Real LLM activations share a large mean direction and
// carry a few massive features; both widen a tile's error window (it scales with the row norms,
// and int8's with each row's largest feature) until many rows are candidates (for fp32 tiles
// too: mean-pooled layers put every cosine within 1e-4 of 1). Per layer, the engine centres the scaled rows z on their mean mu and takes the m
// features that deviate most from it out of the tiles, so that
// <z_x, z_y> = <w_x, w_y> + <v_x, v_y> + <z_x, mu> + <mu, z_y> - |mu|^2 with w the centred rest
// (the tiles' fp32, bf16 or int8 operands), v the split-off features (fp32) and the shifts <z, mu> (the
// exact-score kernel); the constant |mu|^2 is dropped, since the same constant on
// every key of a layer changes no comparison. tile_windows.h (split_tile_error) bounds the result.
#pragma once
#include <cstdint>
#include <vector>

#include "common/metric.h"
#include "cpu/knn_kernels.h"

namespace layerknn::cpu {

// One layer's centre and split-off features.
struct LayerSplit {
  bool active = false;
  std::vector<float> mu;         // [d] the centre: float rounding of the mean scaled row
  double mu_norm = 0.;           // |mu| (float64 sum; bounds enter the window with margin)
  std::vector<int32_t> columns;  // [m] split-off features, ascending
  std::vector<uint8_t> keep;     // [d] 1 where a feature is quantised, 0 where split off
  double outlying = 0.;          // largest max |z_t - mu_t| over the median one (over features)
  int m() const { return static_cast<int>(columns.size()); }
};

// Features split off for d features: up to 16, about one in 16 (none below 16 features).
int split_width(int64_t d);

// The centre of rows x [rows, d] scaled by scale [rows], and the m features whose scaled values
// deviate most from it (largest max |z_t - mu_t| over rows; ties to the lower feature).
void choose_split(const float* x, const float* scale, int64_t rows, int64_t d, int m,
                  LayerSplit* out);

// Whether centring and splitting pays for a layer whose largest scaled row norm is `peak`: it
// has a mean of at least a quarter of that, or features 8 times more outlying than the median
// one (isotropic rows have neither, and keep the plain low-precision tiles).
bool worth_splitting(const LayerSplit& split, double peak);

// The cost model's speed-up of split tiles over fp32 ones: the low-precision tile's speed-up over
// dpad features plus m + 2 fp32 multiply-adds per entry for the split terms.
double split_speedup(double speedup, double dpad, int m);

// out [d] = fl(fl(x * scale) - mu) on kept features, 0 on split-off ones: the rows the tiles'
// packing reads. x [d].
void centre_row(const float* x, float scale, const LayerSplit& split, int64_t d, float* out);

// The same for rows x [count, d] with scale [count] into out [count, d].
void centre_rows(const float* x, const float* scale, int64_t count, const LayerSplit& split,
                 int64_t d, float* out);

// v [m] = fl(fl(x * scale) - mu) on the split-off features; returns |v| (float64 sum). x [d].
double split_values(const float* x, float scale, const LayerSplit& split, float* v);

struct RowArrays;

// Rows [r0, r1) of one side of a layer, x [rows, d] with cosine scales side->scale: the packing
// statistics of their centred rest (fp32: stats[r].packed[kFp32] from exact's row_stats; for
// each low-precision table given, int8: stats[r].packed[kInt8], qstep, qscale, qoffset; bf16:
// stats[r].packed[kBf16]; from the tables' packing_stats), shift fl <z, mu> (exact's dot_batch) and split-off values (split_v, split_vt
// with row stride `rows`, split_norm). int8, bf16: nullptr where not on offer. scratch [d].
void split_side_stats(const float* x, int64_t rows, int64_t r0, int64_t r1, int64_t d,
                      const LayerSplit& split, const KernelSet* int8, const KernelSet* bf16,
                      const KernelSet& exact, RowArrays* side, float* scratch);

// Each query row's window for centred, split tiles of `precision` over dpad
// packed features (split_key_window in tile_windows.h): its own norms for the x side, the
// layer's maxima over the database side y. [x rows]
std::vector<float> split_key_windows(Metric metric, Precision precision, int64_t dpad, int64_t d,
                                     const LayerSplit& split, const RowArrays& x,
                                     const RowArrays& y);

// Adds the fp32 terms to a tile of centred rows: for r < rows, c < cols,
//   t = tile[r][c];  t = t + row_shift[r];  t = t + col_shift[c];  t += row_v[r][s] * col_vt[s][c]
// for s = 0..m-1 in order (fused multiply-adds where the CPU has them). tile [rows, lds]; row_shift [rows]; col_shift [cols];
// row_v [rows, m]; col_vt [m, col_stride] (column c of the tile at col_vt[s * col_stride + c]).
void add_split_terms(float* tile, int64_t lds, int64_t rows, int64_t cols, const float* row_shift,
                     const float* col_shift, const float* row_v, const float* col_vt,
                     int64_t col_stride, int m);

}  // namespace layerknn::cpu
