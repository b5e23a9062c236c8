// The CPU k-nearest-neighbour engine's entry point: exact top-k for every row of every layer,
// blocked distance computation fused with per-row selection (no n x n matrix), self-join
// symmetry, std::thread parallelism and run-time SIMD dispatch live behind this one call.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "common/problems.h"

namespace layerknn::cpu {

// Writes the k best database rows of each query, best first, ties by lower index:
//   indices [L, n, k] int32, scores [L, n, k] float32 (similarity, or squared distance for L2).
// For Metric::Cosine the rows are L2-normalised in fp32 internally (the input is not modified).
// Stops early (outputs unspecified) once `cancel` becomes true. num_threads <= 0: all cores.
// Throws std::invalid_argument naming the layer and row of the first row it meets that holds
// NaN/Inf, or (cosine) whose squared norm is below 1e-30.
void knn(const KnnProblem& problem, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel);

// Name of the SIMD kernel family chosen at run time on this CPU ("avx512-bf16", "avx512",
// "avx2", "scalar"), for diagnostics and benchmarks.
const char* simd_level();

// The tile precisions the engine may use on this CPU, among "fp32", "bf16" (AVX512-BF16) and
// "int8" (AVX512-VNNI); see LAYERKNN_CPU_KERNEL.
std::vector<std::string> tile_precisions();

}  // namespace layerknn::cpu
