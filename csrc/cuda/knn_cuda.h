// Host-side entry points of the CUDA engine, callable from plain C++ (bindings.cpp does not see
// CUDA headers: streams travel as void*). All pointers in the problems are device pointers on
// `device`; work is enqueued on `stream` (the caller's current stream) and is asynchronous.
// Every CUDA call is checked; failures throw std::runtime_error naming the call, file and line.
#pragma once
#include <string>

#include "common/problems.h"

namespace layerknn::cuda {

// Number of CUDA devices usable by this build. Never throws: without a driver or a GPU it returns
// 0 and, if `why` is given, stores the runtime's reason.
int device_count(std::string* why);

// Exact k-NN on the GPU; same layout, tie order and values as layerknn::cpu::knn (indices
// [L, n, k] int32, scores [L, n, k] float32, best first, ties by lower index): candidates from a
// SIMT or tensor-core kernel are re-ranked by the shared exact score (common/exact_score.h), so
// the answer is the CPU engine's bit for bit. LAYERKNN_CUDA_KERNEL=auto|fp32|tc picks the
// candidate path. Largest supported k: max_k(); size limits: limits.h (checked before anything
// is launched).
void knn(const KnnProblem& problem, int32_t* indices, float* scores, int device, void* stream);
int max_k();
// Whether the tensor-core candidate path was built (the toolkit had cuBLAS).
bool has_tensor_core_path();

// Neighbour overlap on the GPU; same contract as layerknn::cpu::overlap (mean [La, Lb] float64,
// counts [La, Lb, n] uint16 or nullptr).
void overlap(const OverlapProblem& problem, double* mean, uint16_t* counts, int device, void* stream);

}  // namespace layerknn::cuda
