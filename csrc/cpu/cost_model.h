// The CPU k-NN engine's per-layer choice of tile precision (fp32, bf16 or int8). Low-precision
// tiles halve (bf16) or quarter (int8) the GEMM time but widen the candidate window (roughly
// 2^-7 |x||y| for bf16, 2^-5 for int8 on well-spread rows); on anisotropic layers (all cosines
// near 1) or rows with outlying features, so many candidates fall inside it that re-scoring or
// overflowing lists cost more than the GEMM saves. A few sampled rows measure how many
// candidates each precision's window would leave; a pure function turns that into the choice.
#pragma once
#include <cstdint>
#include <vector>

#include "common/metric.h"
#include "cpu/knn_kernels.h"

namespace layerknn::cpu {

// A precision on offer and the mean number of candidates per row its window leaves; speedup:
// its tiles' GEMM speed over fp32 tiles (KernelSet::speedup), 0 for the nominal 2^precision.
struct SampledPrecision {
  Precision precision;
  double candidates;
  double speedup = 0.;
  double overhead = 0.;  // per-row preparation (centred, split int8: kSplitRowCost), fp32 GEMM rows
};

// What centring and splitting a layer for int8 tiles costs per row (tile_split.h: the centre and
// split pass, the centred statistics, re-centring each packed block), in fp32 GEMM rows; an
// estimate from a profile on Zen 3 (AVX2), where at n = 512 these passes cost about as much as
// the int8 tiles save.
constexpr double kSplitRowCost = 16;

// A gathered exact score over one fp32 GEMM row, when not measured: the exact score reads a
// random database row (from cache or memory) and runs the 16-lane reference order, the GEMM row
// streams packed panels at the FMA peak. Measured 12 on a Sapphire Rapids core (tile_rate.h).
constexpr double kRescoreCost = 4;

// The cheapest precision: per row, GEMM work (pass_rows database rows per pass over the
// precision's speed-up, 2^precision unless given) + rescore_cost per exactly re-scored candidate
// (one gathered exact score over one fp32 GEMM row: kRescoreCost, or measured, tile_rate.h) +
// the option's overhead, all in fp32 GEMM rows. fp32 is costed at k candidates; a low precision
// qualifies only if its candidates stay within list_budget and it is strictly cheaper; among
// equals the earlier entry of `low` wins.
Precision cheapest_precision(double pass_rows, int k, double list_budget,
                             const std::vector<SampledPrecision>& low,
                             double rescore_cost = kRescoreCost);

// One layer's rows, as the sampler reads them.
struct SampleLayer {
  const float* x;        // [n, d] query rows
  const float* y;        // [m, d] database rows (x in the self-join)
  const float* x_scale;  // [n] cosine scales (1 otherwise)
  const float* y_scale;  // [m]
  int64_t n, m, d;
  int k;
  Metric metric;
  bool exclude_self;     // self-join without j == i
};

// For each set of per-row windows ([n] each), the mean over up to 8 evenly spread query rows of
// how many database rows score within the row's window of its k-th best exact key (exact scores
// from `exact`'s dot_batch / sqdist_batch, one streaming pass over the database).
std::vector<double> sampled_candidates(const SampleLayer& layer, const KernelSet& exact,
                                       const std::vector<std::vector<float>>& windows);

}  // namespace layerknn::cpu
