// Squared L2 norm of every row, accumulated in float64. Used by the Python layer to validate
// inputs in one cheap pass: a non-finite result flags a row holding NaN/Inf (float32 squares
// cannot overflow a double), a zero flags a row that cosine similarity cannot normalise.
#pragma once
#include <atomic>
#include <cstdint>

namespace layerknn::cpu {

// x [rows, d] float32 -> out [rows] float64.
void row_sq_norms(const float* x, int64_t rows, int64_t d, double* out, int num_threads,
                  const std::atomic<bool>& cancel);

}  // namespace layerknn::cpu
