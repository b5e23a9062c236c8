// The correctness core of the CUDA engine's candidate phase: how far a candidate kernel's
// approximate key may lie from the exact key of common/exact_score.h, as pure __host__ __device__
// functions of a few row norms, and the threshold that keeps every candidate that can still be
// in a row's exact top k. Tested alone (and adversarially) by csrc/cuda/emulation/check_windows.cpp.
//
// Why a window keeps the exact top k. Let B bound |approximate key - exact key| over row i's
// pairs and kth be the k-th best approximate key. The k candidates at or above kth have exact
// keys >= kth - B, so every member of the exact top k has exact key >= kth - B and therefore
// approximate key >= kth - 2B: keeping every candidate with approximate key >= kth - 2B (rounded
// down) keeps the exact top k, whatever the order of the approximate keys among themselves.
//
// The bounds (u = 2^-24; gamma_n(v) = n v / (1 - n v); a = |x * scale| bounds the fp32 operand
// the exact score sees; all bounds grow with each norm, so database maxima are safe):
//  * exact score: each product passes ceil(d/16) + 4 roundings (lane FMAs, then the tree), so
//    |exact - <a, b>| <= gamma_h(u) a_x a_y; squared L2: gamma_{h+2}(u) (a_x + a_y)^2.
//  * SIMT fp32 candidates (fused kernel: one sequential FMA chain per pair on the same fp32
//    operands): gamma_{d+2}(u) a_x a_y; squared L2: gamma_{d+2}(u) (a_x + a_y)^2.
//  * GEMM candidates (cuBLAS, tensor cores): operands rounded to type t (fp16, bf16, or fp32
//    itself) give x~, y~ with p = |x~| and e = |x~ - a| measured per row (so subnormals and
//    any rounding mode are covered), and <x~, y~> - <a, b> = <x~ - a, y~> + <a, y~ - b>, at most
//    e_x p_y + a_x e_y (Cauchy-Schwarz). Products of fp16/bf16 values are exact in fp32. The
//    fp32 accumulation may be in ANY order and need not round to nearest (tensor cores
//    truncate), so each addition is charged 4u (truncation costs 2u; the rest is margin), and any
//    summation tree over d + 1 terms has depth <= d: gamma_{d+2}(4u) p_x p_y. Sums or products
//    below 2^-126 may flush to zero: at most (d + 1) 2^-126 in all, inside an absolute 1e-30
//    for d < 1e7.
//  * squared-L2 GEMM keys 2 <x~, y~> - (|x|^2 + |y|^2) with fp32 squared norms: the product
//    error twice plus 4u (2 a_x a_y + a_x^2 + a_y^2) for the norms and the two roundings.
// Overflow is out of scope (the Python layer rejects inputs whose scores overflow fp32); the
// float64 norms carry ~d 2^-53 relative error, covered by the 1e-6 relative margin.
#pragma once
#include <math.h>

#include "common/hd.h"
#include "common/metric.h"

namespace layerknn::windows {

constexpr double kUnit = 1.0 / 16777216.0;  // fp32 unit roundoff 2^-24
constexpr double kAccumulationUnit = 4 * kUnit;  // GEMM additions of unknown order / rounding

LAYERKNN_HD double gamma(double n, double unit = kUnit) { return n * unit / (1.0 - n * unit); }

// One side of a pair: a >= |x * scale| (the exact score's fp32 operand), p = |GEMM operand|,
// e = |GEMM operand - fp32 operand| (p = a, e = 0 when the GEMM runs on the fp32 operands).
struct Norms {
  double a = 0., p = 0., e = 0.;
};

// Bound on |exact score - true score| over d features (inner product or squared distance).
LAYERKNN_HD double exact_error(Metric metric, double d, double ax, double ay) {
  const double depth = ceil(d / 16) + 4;
  if (metric == Metric::SquaredL2) return gamma(depth + 2) * (ax + ay) * (ax + ay);
  return gamma(depth) * ax * ay;
}

// Bound on |SIMT fused-kernel key - exact key|: both sum the same fp32 operands.
LAYERKNN_HD double simt_key_error(Metric metric, double d, double ax, double ay) {
  const double chain = metric == Metric::SquaredL2 ? gamma(d + 2) * (ax + ay) * (ax + ay)
                                                   : gamma(d + 2) * ax * ay;
  return chain + exact_error(metric, d, ax, ay);
}

// Bound on |GEMM tile - <a, b>| for operands with norms x, y over d features, any order.
LAYERKNN_HD double gemm_error(double d, const Norms& x, const Norms& y) {
  return x.e * y.p + x.a * y.e + gamma(d + 2, kAccumulationUnit) * x.p * y.p + 1e-30;
}

// Bound on |GEMM key - exact key| (squared L2 keys: 2 tile - (|x|^2 + |y|^2), negated scores).
LAYERKNN_HD double gemm_key_error(Metric metric, double d, const Norms& x, const Norms& y) {
  const double product = gemm_error(d, x, y);
  if (metric == Metric::SquaredL2) {
    return 2 * product + 4 * kUnit * (2 * x.a * y.a + x.a * x.a + y.a * y.a) +
           exact_error(metric, d, x.a, y.a);
  }
  return product + exact_error(metric, d, x.a, y.a);
}

// The window kept below the k-th best key: 2 B with a 1e-6 relative margin and 1e-30 absolute,
// rounded up to a float (+inf if it does not fit: then every candidate is kept).
LAYERKNN_HD float window_of(double error) {
  const double w = 2 * error * (1 + 1e-6) + 1e-30;
  if (!(w < 3.4e38)) return INFINITY;
  float f = static_cast<float>(w);
  if (static_cast<double>(f) < w) f = nextafterf(f, INFINITY);
  return f;
}

// The threshold kth - window, rounded towards -infinity: the nearest-rounded difference is
// within half an ulp of the true one, so one ulp lower is never above it.
LAYERKNN_HD float threshold_below(float kth, float window) {
  const float f = kth - window;
  if (!(fabsf(f) < INFINITY)) return -INFINITY;
  return nextafterf(f, -INFINITY);
}

}  // namespace layerknn::windows
