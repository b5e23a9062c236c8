// The correctness core of the CPU k-NN engine: how far an approximate tile key may lie from the
// exact key that defines the results, as pure functions of a few row norms. The engine keeps
// every candidate within twice this bound of a row's k-th best approximate key, which provably
// contains the exact top k; tests/test_windows.py tries to break each bound on adversarial rows
// (through layerknn._core._testing, bound in bindings.cpp).
#pragma once
#include <cmath>
#include <cstdint>

#include "common/metric.h"
#include "cpu/knn_kernels.h"

namespace layerknn::cpu {

constexpr double kUnit = 1.0 / 16777216.0;  // fp32 unit roundoff 2^-24

// gamma_n = n u / (1 - n u): the classic bound on n successive fp32 roundings.
inline double gamma(double n) { return n * kUnit / (1.0 - n * kUnit); }

// Smallest float >= v.
inline float round_up_to_float(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, INFINITY);
  return f;
}

// One side of a pair, as the bounds see it (float64): a >= |x * scale| (the fp32 operand the
// exact score sees), p = |packed operand|, e = |packed - fp32 operand| (p = a, e = 0 for fp32).
// The engine's a, p, e are float64 sums, exact to ~d 2^-53 relative: key_window's margin.
struct OperandNorms {
  double a = 0., p = 0., e = 0.;
};

// Why the window holds. For query row i let B_i bound |approximate tile key - exact key| over
// its pairs (i, j). Row i's list keeps every candidate whose approximate key is >= (k-th best
// approximate key) - 2 B_i, and so provably holds the exact top k: each of the k best
// approximate candidates has an exact key >= kth - B_i, so every exact top-k member has exact
// key >= kth - B_i and approximate key >= kth - 2 B_i. Notation: u = 2^-24,
// gamma_n = n u / (1 - n u); x is row i, y any database row (bounded by the layer's maxima;
// every bound below grows with each norm, so maxima are safe).
//  * fp32 tile: each lane sums dpad exact-or-rounded products in order, so
//    |tile - <x, y>| <= gamma_{dpad+2} sum |x_t y_t| <= gamma_{dpad+2} a_x a_y (Cauchy-Schwarz).
//  * bf16 tile: <x~, y~> - <x, y> = <x~ - x, y> + <x~, y~ - y>, bounded by e_x a_y + p_x e_y;
//    the bf16 products are exact in fp32 and VDPBF16PS rounds at most twice per pair of
//    features, so accumulation adds gamma_{dpad+2} p_x p_y. VCVTNEPS2BF16 turns denormal
//    inputs into zeros (Intel SDM), which e counts, so no bf16 denormal reaches VDPBF16PS (it
//    would read one as zero); products and sums that fall below 2^-126 are flushed there, at
//    most 2 dpad x 2^-126 in all: < 1e-30 for dpad < 4e7.
//  * int8 tile: the same e_x a_y + p_x e_y for x~ = step * codes; the code products sum
//    exactly in int32, then one conversion and two scalings add gamma_3 p_x p_y.
//  * exact score: lane t mod 16 accumulates its ceil(d/16) products by fused multiply-adds (one
//    rounding each, the first included), then the halving tree adds 4 levels, so every product
//    passes at most h = ceil(d/16) + 4 roundings: |exact - <x, y>| <= gamma_h a_x a_y. For
//    squared L2 each rounded difference squared is within (1 + u)^2 <= 1 + gamma_2 of
//    (x_t - y_t)^2, so <= gamma_{h+2} (a_x + a_y)^2 (sum (x_t - y_t)^2 <= (a_x + a_y)^2).
//  * squared-L2 keys 2 tile - (|x|^2 + |y|^2) add fp32-rounded norms and two roundings:
//    <= 4 u (2 a_x a_y + a_x^2 + a_y^2), with the tile error counted twice.
// These are relative bounds for results in fp32's normal range. Underflowing fp32 results
// (absolute error <= 2^-150 each, below the relative model) are covered by key_window's 1e-30;
// overflow is out of scope (inputs whose scores overflow fp32 are rejected before the engine).

// Bound on |tile - <x, y>| for tiles of `precision` over dpad packed features (dpad = d padded
// to the precision's group).
inline double tile_error(Precision precision, double dpad, const OperandNorms& x,
                         const OperandNorms& y) {
  const double accumulation = precision == kInt8 ? gamma(3) : gamma(dpad + 2);
  return precision == kFp32 ? accumulation * x.a * y.a
                            : x.e * y.a + x.p * y.e + accumulation * x.p * y.p + 1e-30;
}

// Bound on |exact score - true score| of the engine's exact fp32 score over d features: the
// inner product (cosine, ip) or the squared distance (squared L2).
inline double exact_error(Metric metric, double d, double ax, double ay) {
  const double depth = std::ceil(d / 16) + 4;  // roundings on any one product (see above)
  if (metric == Metric::SquaredL2) return gamma(depth + 2) * (ax + ay) * (ax + ay);
  return gamma(depth) * ax * ay;
}

// Bound B on |approximate tile key - exact key| (keys: rank_key of the scores; squared L2 tile
// keys are 2 tile - (|x|^2 + |y|^2) with fp32-rounded squared norms).
inline double key_error(Metric metric, Precision precision, double d, double dpad,
                        const OperandNorms& x, const OperandNorms& y) {
  const double product = tile_error(precision, dpad, x, y);
  if (metric == Metric::SquaredL2) {
    return 2 * product + 4 * kUnit * (2 * x.a * y.a + x.a * x.a + y.a * y.a) +
           exact_error(metric, d, x.a, y.a);
  }
  return product + exact_error(metric, d, x.a, y.a);
}

// Centred, split tiles (tile_split.h; inner-product keys only: fp32, bf16 or int8 operands of
// the centred rest; e = 0 for fp32). Here, per side, a >= |z|
// (z = fl(x * scale), the fp32 operand of the exact score), p = |w~| and e = |w~ - w| for the
// quantised centred rest w = fl(z - mu) (zero on the split-off features), s = |v| for the
// split-off values v = fl(z - mu) there, and c the centre's norm |mu|. In reals,
//   <z_x, z_y> = <z_x - mu, z_y - mu> + <z_x, mu> + <mu, z_y> - c^2,
// and z - mu = w + v + delta with disjoint supports for w, v and |delta| <= u |z - mu|
// <= u (a + c); 3 u (a + c) is used, which also covers a compiler fusing x * scale - mu into
// one rounding of the unrounded product (u |x scale - mu| + u |x scale|). The tile computes
// t = ((Q + b_x) + b_y) + sum_s v_x,s v_y,s (fp32, in that order), where Q is the int8 or bf16
// tile of w~ and b = fl <z, mu> the exact-score kernel's shift; it approximates <z_x, z_y> + c^2, and
// a constant on every key of the layer changes no comparison of the window argument (every
// list compares keys of its own row, all shifted alike), so the bound is on
// |t - (<z_x, z_y> + c^2)|, the sum of
//  * quantisation: <w~_x, w~_y> - <w_x, w_y> = <w~_x - w_x, w_y> + <w~_x, w~_y - w_y>, at most
//    e_x (p_y + e_y) + p_x e_y (|w_y| <= p_y + e_y);
//  * Q: int8, exact int32 sums, one conversion and two scalings: gamma_3 p_x p_y; bf16 and fp32,
//    products summed in fp32 with at most dpad + 2 roundings each: gamma_{dpad+2} p_x p_y (as
//    for plain bf16 and fp32 tiles above);
//  * shifts: each within gamma_h a c of <z, mu> (exact_error with h = ceil(d/16) + 4);
//  * the summation of m + 3 terms, each product rounded once: gamma_{m+3} times
//    (|Q| + |b_x| + |b_y| + s_x s_y), with |Q| <= (1 + gamma_3) p_x p_y, |b| <= (1 + gamma_h) a c;
//  * delta: <z_x - mu, z_y - mu> - <w_x + v_x, w_y + v_y> = <delta_x, z_y - mu> +
//    <w_x + v_x, delta_y>, at most 3u (a_x + c)(a_y + c)(2 + 3u) <= 7u (a_x + c)(a_y + c).
// Products of v that underflow fp32 add at most (m + 3) 2^-150, inside the absolute 1e-30.
// precision: the tiles' operands of the rest, over dpad packed features.
inline double split_tile_error(Precision precision, double dpad, double d, int m, double c,
                               const OperandNorms& x, const OperandNorms& y, double sx, double sy) {
  const double h = std::ceil(d / 16) + 4;
  const double accumulation = precision == kInt8 ? gamma(3) : gamma(dpad + 2);
  const double q = (1 + accumulation) * x.p * y.p;
  const double shifts = (1 + gamma(h)) * (x.a + y.a) * c;
  return x.e * (y.p + y.e) + x.p * y.e + accumulation * x.p * y.p + gamma(h) * (x.a + y.a) * c +
         gamma(m + 3.0) * (q + shifts + sx * sy) + 7 * kUnit * (x.a + c) * (y.a + c) + 1e-30;
}

// The window of centred, split tiles: 2 B (1 + 1e-6) + 1e-30 rounded up, with
// B = split_tile_error + exact_error (ip and cosine keys are the scores themselves).
inline float split_key_window(Metric metric, Precision precision, int64_t dpad, int64_t d, int m,
                              double c, const OperandNorms& x, const OperandNorms& y, double sx,
                              double sy) {
  const double dd = static_cast<double>(d);
  const double error = split_tile_error(precision, static_cast<double>(dpad), dd, m, c, x, y, sx, sy) +
                       exact_error(metric, dd, x.a, y.a);
  return round_up_to_float(2 * error * (1 + 1e-6) + 1e-30);
}

// The window a list row keeps below its k-th best key: 2 B with a relative margin of 1e-6
// (for the float64 norms' own roundings) and an absolute 1e-30, rounded up to a float.
inline float key_window(Metric metric, Precision precision, int64_t d, int64_t dpad,
                        const OperandNorms& x, const OperandNorms& y) {
  const double error = key_error(metric, precision, static_cast<double>(d),
                                 static_cast<double>(dpad), x, y);
  return round_up_to_float(2 * error * (1 + 1e-6) + 1e-30);
}

}  // namespace layerknn::cpu
