// PLACEHOLDER reference implementation of the CPU k-NN engine (see knn_cpu.h): one query row at
// a time, every score, then a partial sort. Correct but slow; the blocked, symmetric, SIMD engine
// replaces it.
#include "cpu/knn_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/parallel.h"

namespace layerknn::cpu {

const char* simd_level() { return "scalar"; }

void knn(const KnnProblem& p, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel) {
  const float* y = p.y ? p.y : p.x;
  const int64_t m = p.y ? p.m : p.n;
  const bool self = (p.y == nullptr) && p.exclude_self;
  parallel_for(p.L * p.n, num_threads, cancel, [&](int64_t task, int) {
    const int64_t l = task / p.n, i = task % p.n;
    const float* xi = p.x + (l * p.n + i) * p.d;
    const float* yl = y + l * m * p.d;
    auto norm = [&](const float* v) {
      float s = 0.f;
      for (int64_t t = 0; t < p.d; ++t) s += v[t] * v[t];
      return std::sqrt(s);
    };
    const float ni = p.metric == Metric::Cosine ? 1.f / norm(xi) : 1.f;
    std::vector<std::pair<float, int32_t>> cand;
    cand.reserve(m);
    for (int64_t j = 0; j < m; ++j) {
      if (self && j == i) continue;
      const float* yj = yl + j * p.d;
      float s = 0.f;
      if (p.metric == Metric::SquaredL2) {
        for (int64_t t = 0; t < p.d; ++t) s += (xi[t] - yj[t]) * (xi[t] - yj[t]);
      } else if (p.metric == Metric::Cosine) {
        const float nj = 1.f / norm(yj);
        for (int64_t t = 0; t < p.d; ++t) s += (xi[t] * ni) * (yj[t] * nj);
      } else {
        for (int64_t t = 0; t < p.d; ++t) s += xi[t] * yj[t];
      }
      cand.emplace_back(rank_key(s, p.metric), static_cast<int32_t>(j));
    }
    std::partial_sort(cand.begin(), cand.begin() + p.k, cand.end(), [](auto& a, auto& b) {
      return ranks_before(a.first, a.second, b.first, b.second);
    });
    for (int c = 0; c < p.k; ++c) {
      indices[task * p.k + c] = cand[c].second;
      scores[task * p.k + c] = rank_key(cand[c].first, p.metric);
    }
  });
}

}  // namespace layerknn::cpu
