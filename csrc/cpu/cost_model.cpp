// The per-layer tile precision choice of the CPU k-NN engine (see cost_model.h): sampling of
// candidate counts, and the pure cost comparison that turns them into a precision.
#include "cpu/cost_model.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "cpu/topk_candidates.h"

namespace layerknn::cpu {

Precision cheapest_precision(double pass_rows, int k, double list_budget,
                             const std::vector<SampledPrecision>& low, double rescore_cost) {
  auto cost = [&](const SampledPrecision& option) {
    const double speedup = option.speedup > 0 ? option.speedup : double(1 << option.precision);
    return pass_rows / speedup + rescore_cost * option.candidates + option.overhead;
  };
  Precision best = kFp32;
  double best_cost = cost({kFp32, double(k), 1.});
  for (const SampledPrecision& option : low) {
    if (option.candidates <= list_budget && cost(option) < best_cost) {
      best = option.precision;
      best_cost = cost(option);
    }
  }
  return best;
}

std::vector<double> sampled_candidates(const SampleLayer& layer, const KernelSet& exact,
                                       const std::vector<std::vector<float>>& windows) {
  constexpr int kSamples = 8;
  const int64_t n = layer.n, m = layer.m, d = layer.d;
  const int k = layer.k;
  const int samples = static_cast<int>(std::min<int64_t>(kSamples, n));
  std::vector<const float*> rows(samples);
  std::vector<float> scales(samples), keys(size_t(samples) * m), out(samples);
  std::vector<int64_t> which(samples);
  for (int s = 0; s < samples; ++s) {
    which[s] = (2 * s + 1) * n / (2 * samples);
    rows[s] = layer.x + which[s] * d;
    scales[s] = layer.x_scale[which[s]];
  }
  for (int64_t j = 0; j < m; ++j) {  // the database row stays in cache for all samples
    if (layer.metric == Metric::SquaredL2) {
      exact.sqdist_batch(layer.y + j * d, rows.data(), samples, d, out.data());
    } else {
      exact.dot_batch(layer.y + j * d, layer.y_scale[j], rows.data(), scales.data(), samples, d,
                      out.data());
    }
    for (int s = 0; s < samples; ++s) {
      const bool self = layer.exclude_self && j == which[s];
      keys[s * m + j] = self ? -INFINITY : rank_key(out[s], layer.metric);
    }
  }
  std::vector<double> totals(windows.size(), 0.);
  for (int s = 0; s < samples; ++s) {
    float* row = keys.data() + s * m;
    std::nth_element(row, row + (k - 1), row + m, std::greater<float>());
    for (size_t w = 0; w < windows.size(); ++w) {
      const float threshold = lower_difference(row[k - 1], windows[w][which[s]]);
      totals[w] += static_cast<double>(
          std::count_if(row, row + m, [&](float v) { return v >= threshold; }));
    }
  }
  for (double& total : totals) total /= samples;
  return totals;
}

}  // namespace layerknn::cpu
