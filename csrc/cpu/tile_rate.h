// How fast one kernel table's tile GEMM runs on this machine, alone (no scan, no re-scoring):
// one thread, one engine-sized tile (192 x 192 rows) of random packed rows, the best of several.
// The cost model weighs each low-precision table by its measured speed over the fp32 tiles
// (tile_speedup), and each exactly re-scored candidate by the measured cost of a gathered exact
// score (rescore_cost), because nominal ratios do not hold everywhere: on a Sapphire Rapids
// core the AVX-512 bf16 tiles run at half the fp32 speed, the AMX ones at seven times it. Benchmarks
// read the raw rates through layerknn._core._testing.tile_gemm_rate.
#pragma once
#include <cstdint>
#include <utility>

#include "cpu/knn_kernels.h"

namespace layerknn::cpu {

// (best GFLOP/s, counting 2 x 192 x 192 x d per tile; tiles timed) of `table`'s GEMM over d
// features, timing single tiles for about `seconds` (at least three).
std::pair<double, int64_t> tile_gemm_rate(const KernelSet& table, int64_t d, double seconds);

// One gathered exact score (fp32's dot_batch on a random row of a 4 MiB layer) over one fp32 GEMM
// row at d = 512: the cost model's rescore_cost, measured once per process and table (about
// 10 ms); kRescoreCost if it cannot be measured.
double rescore_cost(const KernelSet& fp32);

// `table`'s tile speed over `fp32`'s at d = 512, measured once per process and pair of tables
// (a few milliseconds); falls back to table.speedup if a rate cannot be measured.
double tile_speedup(const KernelSet& table, const KernelSet& fp32);

}  // namespace layerknn::cpu
