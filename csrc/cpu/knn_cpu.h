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
// layers_done, if given, is incremented once per finished layer (layers finish in any order
// and from any thread; readers poll it, e.g. for a progress bar).
// Throws std::invalid_argument naming the layer and row of the first row it meets that holds
// NaN/Inf, or (cosine) whose squared norm is below 1e-30.
void knn(const KnnProblem& problem, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel, std::atomic<int64_t>* layers_done = nullptr);

// How one layer of a call was computed: the kernel table of its tiles ("avx2", "avx2-int8",
// "avx512-bf16", ...) and the mean number of candidates per query row that the merge scored
// exactly (about k when the window is tight; every database row for rows scanned exactly).
struct LayerReport {
  std::string table;
  double candidates_per_row = 0.;
};

// The per-layer reports of the most recent knn call in this process that finished (for
// benchmarks and diagnostics; calls running concurrently overwrite each other's).
std::vector<LayerReport> last_layer_reports();

}  // namespace layerknn::cpu
