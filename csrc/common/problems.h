// Plain descriptions of the two computations, shared by the CPU and CUDA engines. Pointers are
// host memory for the CPU engine and device memory for the CUDA engine; shapes are row-major and
// contiguous (the Python layer guarantees it before calling _core).
#pragma once
#include <cstdint>

#include "common/metric.h"

namespace layerknn {

struct KnnProblem {
  const float* x = nullptr;  // [L, n, d] queries
  const float* y = nullptr;  // [L, m, d] database rows, or nullptr for the self-join (y = x, m = n)
  int64_t L = 0, n = 0, m = 0, d = 0;
  int k = 0;                 // 1 <= k <= m - (self-join && exclude_self ? 1 : 0)
  Metric metric = Metric::Cosine;
  bool exclude_self = true;  // self-join only: drops j == i by index, never "the first column"
};

struct OverlapProblem {
  const int32_t* a = nullptr;  // [La, n, ka] neighbour indices of model A's layers
  const int32_t* b = nullptr;  // [Lb, n, kb] neighbour indices of model B's layers
  int64_t La = 0, Lb = 0, n = 0;
  int ka = 0, kb = 0;
  int k = 0;                   // leading columns used from each row, 1 <= k <= min(ka, kb)
};

}  // namespace layerknn
