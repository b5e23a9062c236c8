// Row-wise squared norms in float64 (see row_norms.h); parallel over blocks of rows.
#include "cpu/row_norms.h"

#include <algorithm>

#include "cpu/parallel.h"

namespace layerknn::cpu {

void row_sq_norms(const float* x, int64_t rows, int64_t d, double* out, int num_threads,
                  const std::atomic<bool>& cancel) {
  const int64_t chunk = 256;
  parallel_for((rows + chunk - 1) / chunk, num_threads, cancel, [&](int64_t task, int) {
    const int64_t end = std::min(rows, (task + 1) * chunk);
    for (int64_t r = task * chunk; r < end; ++r) {
      const float* v = x + r * d;
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t t = 0;
      for (; t + 4 <= d; t += 4) {
        s0 += double(v[t]) * v[t];
        s1 += double(v[t + 1]) * v[t + 1];
        s2 += double(v[t + 2]) * v[t + 2];
        s3 += double(v[t + 3]) * v[t + 3];
      }
      for (; t < d; ++t) s0 += double(v[t]) * v[t];
      out[r] = (s0 + s1) + (s2 + s3);
    }
  });
}

}  // namespace layerknn::cpu
