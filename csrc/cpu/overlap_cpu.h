// The CPU neighbour-overlap engine: for every pair of layers (a, b) and every prompt i, the size
// of N_a(i) ∩ N_b(i) over the first k neighbours of each row. Each row is sorted once, then
// pairs are merge-intersected in parallel over blocks of layer pairs.
#pragma once
#include <atomic>
#include <cstdint>

#include "common/problems.h"

namespace layerknn::cpu {

// mean   [La, Lb] float64: mean over prompts of |A_i ∩ B_i| / k (required).
// counts [La, Lb, n] uint16: per-prompt intersection sizes, or nullptr to skip them.
void overlap(const OverlapProblem& problem, double* mean, uint16_t* counts, int num_threads,
             const std::atomic<bool>& cancel);

}  // namespace layerknn::cpu
