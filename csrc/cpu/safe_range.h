// The row-norm range inside which the k-NN engines' fp32 intermediates are finite and normal.
// With every row norm of a layer at most kSafeNormMax = 2^60, each product, partial sum, squared
// norm, squared-L2 key 2 <x, y> - |x|^2 - |y|^2 (at most 4 * 2^120) and candidate window stays
// far below FLT_MAX = 2^128; with the layer's largest norm at least kSafeNormMin = 2^-32, the
// scores' scale stays far above the subnormal range, so flushed products are negligible. Layers
// outside it make the engine throw (see safe_range_error); python/layerknn/_scaling.py then
// multiplies them by a power of two (exactly rank-preserving) and retries. Keep both in sync.
#pragma once
#include <string>
#include <vector>

#include "common/metric.h"
#include "cpu/knn_kernels.h"

namespace layerknn::cpu {

constexpr double kSafeNormMax = 0x1p60;
constexpr double kSafeNormMin = 0x1p-32;

// Whether a layer whose largest row norm is `norm` may run unscaled (all-zero layers may).
inline bool norm_in_safe_range(double norm) {
  return norm == 0. || (norm >= kSafeNormMin && norm <= kSafeNormMax);
}

inline double max_row_norm(const std::vector<RowStats>& rows) {  // rows [n]
  double top = 0.;
  for (const RowStats& r : rows) top = r.norm > top ? r.norm : top;
  return top;
}

// Why layer `layer` (query side x, database side y; the same rows in the self-join) must be
// rescaled, or "" when it need not: inner product looks at each side's largest norm (its sides
// may be scaled separately), squared L2 at the larger of the two (one common scale). Cosine
// rows are normalised before any product, so they never need it. The engine throws the
// message as std::overflow_error (OverflowError in Python).
inline std::string safe_range_error(Metric metric, const std::vector<RowStats>& x,
                                    const std::vector<RowStats>& y, int64_t layer) {
  if (metric == Metric::Cosine) return "";
  const double nx = max_row_norm(x), ny = max_row_norm(y);
  const bool safe = metric == Metric::InnerProduct
                        ? norm_in_safe_range(nx) && norm_in_safe_range(ny)
                        : norm_in_safe_range(nx > ny ? nx : ny);
  if (safe) return "";
  return "layer " + std::to_string(layer) +
         ": row norms outside the float32-safe range [2^-32, 2^60] (largest " +
         std::to_string(nx > ny ? nx : ny) + "); rescale by a power of two";
}

}  // namespace layerknn::cpu
