// The CPU engine for every neighbourhood measure of layerknn.overlap(measure=): for each pair of
// layers (a, b) and each prompt i it scores N_a(i) against N_b(i) with one of the pure functions
// of measure_scores.h, writes the optional per-prompt score and averages over prompts. The
// mutual measure also has the faster counting engine of overlap_cpu.h, which Python uses for it.
#pragma once
#include <atomic>
#include <cstdint>

#include "common/problems.h"

namespace layerknn::cpu {

// Codes shared with python/layerknn/_backend.py (MEASURE_CODES).
enum class Measure : int { Mutual = 0, Jaccard = 1, Rank = 2, Cycle = 3, Lcs = 4, Edit = 5 };

// True for the codes above.
bool valid_measure(int code);

// mean   [La, Lb] float64: mean over prompts of the [0, 1] score (required).
// scores [La, Lb, n] float32: the per-prompt scores, or nullptr to skip them.
// Deterministic: each mean is summed over prompts in order, whatever num_threads is.
void overlap_measure(const OverlapProblem& problem, Measure measure, double* mean, float* scores,
                     int num_threads, const std::atomic<bool>& cancel);

}  // namespace layerknn::cpu
