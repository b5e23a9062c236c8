// Metrics and the one total order on (score, index) candidates shared by every backend.
// Similarity metrics (inner product, cosine) rank higher scores first; squared L2 ranks lower
// scores first. Equal scores always rank the lower index first, so results are deterministic and
// identical between the CPU and CUDA engines whenever their fp32 scores agree.
#pragma once
#include "common/hd.h"

namespace layerknn {

enum class Metric : int {
  InnerProduct = 0,  // score = <x_i, y_j>, larger is better
  Cosine = 1,        // score = <x_i/|x_i|, y_j/|y_j|> in fp32, larger is better
  SquaredL2 = 2,     // score = |x_i - y_j|^2, smaller is better
};

LAYERKNN_HD bool larger_is_better(Metric metric) { return metric != Metric::SquaredL2; }

// Key that turns every metric into "larger key is better": squared L2 is negated. Negation is
// exact in IEEE arithmetic, so comparing keys is the same as comparing scores.
LAYERKNN_HD float rank_key(float score, Metric metric) {
  return larger_is_better(metric) ? score : -score;
}

// True when candidate (key_a, idx_a) ranks strictly before (key_b, idx_b): higher key first,
// then lower index. This is the single tie rule of layerknn.
LAYERKNN_HD bool ranks_before(float key_a, int32_t idx_a, float key_b, int32_t idx_b) {
  return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

}  // namespace layerknn
