// The one exact score of layerknn, shared bit for bit by the CPU engine (its scalar table is
// this code; the AVX2/AVX-512 tables vectorise the same operations in the same order) and the
// CUDA engine's norm and re-rank kernels. Both engines rank their candidates by these values,
// so they return identical indices and scores on any finite input.
//  * squared norm: float64, 16 lanes (lane = t mod 16) of x_t^2, summed by the halving tree;
//  * cosine scale: float(1 / sqrt(squared norm)) in float64 (0 for a zero row), 1 otherwise;
//  * dot (cosine, ip): 16 fp32 lanes of fma(fl(a_t s_a), fl(b_t s_b), lane), halving tree;
//  * squared L2: 16 fp32 lanes of fma(d_t, d_t, lane) with d_t = fl(a_t - b_t), halving tree.
// Contraction-proof: the only products are fma operands or exact float64 squares of floats, so
// a compiler fusing a multiply into an add (nvcc's default, -ffp-contract=fast) cannot change a
// bit. A lane is written so that one thread can own it (GPU: 16 threads per pair, one lane each)
// and the tree can be applied by whoever holds the 16 partial sums.
#pragma once
#include <math.h>

#include "common/hd.h"
#include "common/metric.h"

namespace layerknn::exact {

constexpr int kLanes = 16;

// Halving tree over 16 partial sums: l += l+8, then l += l+4, l += l+2, finally l0 + l1.
template <class T>
LAYERKNN_HD T reduce_lanes(const T* lane) {  // lane [16]
  T w8[8], w4[4], w2[2];
  for (int l = 0; l < 8; ++l) w8[l] = lane[l] + lane[l + 8];
  for (int l = 0; l < 4; ++l) w4[l] = w8[l] + w8[l + 4];
  for (int l = 0; l < 2; ++l) w2[l] = w4[l] + w4[l + 2];
  return w2[0] + w2[1];
}

// Lane `lane` of the squared norm of x * scale (each element rounded to fp32 first).
LAYERKNN_HD double sq_norm_lane(const float* x, int64_t d, float scale, int lane) {  // x [d]
  double acc = 0.;
  for (int64_t t = lane; t < d; t += kLanes) {
    const double v = x[t] * scale;
    acc += v * v;  // exact square of a float: fused or not, one rounding
  }
  return acc;
}

// Lane `lane` of the dot product of a * sa and b * sb (cosine, inner product: sa = sb = 1).
LAYERKNN_HD float dot_lane(const float* a, float sa, const float* b, float sb, int64_t d,  // a, b [d]
                           int lane) {
  float acc = 0.f;
  for (int64_t t = lane; t < d; t += kLanes) acc = fmaf(a[t] * sa, b[t] * sb, acc);
  return acc;
}

// Lane `lane` of the squared distance between a and b.
LAYERKNN_HD float sqdist_lane(const float* a, const float* b, int64_t d, int lane) {  // a, b [d]
  float acc = 0.f;
  for (int64_t t = lane; t < d; t += kLanes) {
    const float diff = a[t] - b[t];
    acc = fmaf(diff, diff, acc);
  }
  return acc;
}

LAYERKNN_HD double sq_norm(const float* x, int64_t d, float scale = 1.f) {  // x [d]
  double lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = sq_norm_lane(x, d, scale, l);
  return reduce_lanes(lane);
}

// The scale a row is used with: 1/|x| in fp32 for cosine (0 for a zero row), else 1.
LAYERKNN_HD float row_scale(double sq_norm, bool normalise) {
  if (!normalise) return 1.f;
  return sq_norm > 0 ? static_cast<float>(1.0 / sqrt(sq_norm)) : 0.f;
}

// Upper bound on |x * scale| (the fp32 operand the score sees), as the CPU engine's RowStats.norm:
// the float64 sums are exact to ~d 2^-53 relative, inside the 1e-6 margin.
LAYERKNN_HD double operand_norm(double sq_norm, float scale, bool normalise) {
  return normalise ? sqrt(sq_norm) * static_cast<double>(scale) * (1 + 1e-6) : sqrt(sq_norm);
}

LAYERKNN_HD float dot(const float* a, float sa, const float* b, float sb, int64_t d) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = dot_lane(a, sa, b, sb, d, l);
  return reduce_lanes(lane);
}

LAYERKNN_HD float sqdist(const float* a, const float* b, int64_t d) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = sqdist_lane(a, b, d, l);
  return reduce_lanes(lane);
}

// The exact score of rows a (scale sa) and b (scale sb) under `metric` (scales are 1 unless
// cosine): the value both engines report.
LAYERKNN_HD float score(Metric metric, const float* a, float sa, const float* b, float sb,
                        int64_t d) {
  return metric == Metric::SquaredL2 ? sqdist(a, b, d) : dot(a, sa, b, sb, d);
}

}  // namespace layerknn::exact
