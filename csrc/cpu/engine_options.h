// What the CPU k-NN engine may use on this machine, for this call: the processor's SIMD level and
// tile precisions (run-time feature tests), capped or forced by the environment variables
// LAYERKNN_CPU_SIMD and LAYERKNN_CPU_KERNEL, resolved into the kernel tables of one call. Pure
// configuration: nothing here touches data.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/metric.h"
#include "cpu/knn_kernels.h"

namespace layerknn::cpu {

// The kernel tables one call may use: fp32 tiles always, low-precision tiles where allowed.
struct KernelChoice {
  const KernelSet* fp32 = nullptr;
  const KernelSet* bf16 = nullptr;    // nullptr: not available or not wanted
  const KernelSet* int8 = nullptr;    // likewise
  const KernelSet* forced = nullptr;  // LAYERKNN_CPU_KERNEL=bf16|int8: skip the per-layer choice
  bool split = false;  // tiles of centred, split rows where worth it (tile_split.h): ip, cosine
};

// LAYERKNN_CPU_SIMD=auto|avx512|avx2|scalar caps the instruction set (for testing);
// LAYERKNN_CPU_KERNEL=auto|fp32|bf16|int8 picks the tile precision: auto considers bf16 tiles
// (AVX512-BF16) and int8 tiles (AVX512-VNNI, or VPMADDUBSW on AVX2-only CPUs) for cosine and
// lets a per-layer sample pick the cheapest (cost_model.h); bf16 or int8 forces that precision
// for every metric where the CPU has it; fp32 never uses low precision. Results are identical either way (exact re-scoring).
// LAYERKNN_CPU_AMX=auto|off: on CPUs with AMX (and the kernel's permission to use it), the bf16
// and int8 tiles run on the matrix unit (simd_amx.cpp) unless off; same windows, same results.
// LAYERKNN_CPU_SPLIT=auto|off: tiles (any precision) of ip and cosine keys read each layer's rows
// centred on their mean with their most outlying features scored in fp32 (tile_split.h), unless
// off (for comparison).
// Throws std::invalid_argument naming the variable for any other value. d: feature count.
KernelChoice choose_kernels(Metric metric, int64_t d);

// Name of the SIMD kernel family chosen at run time on this CPU ("avx512-amx", "avx512-bf16",
// "avx512", "avx2", "scalar"), for diagnostics and benchmarks. Ignores LAYERKNN_CPU_SIMD.
const char* simd_level();

// The fp32 kernel table a call would use now ("avx512", "avx2" or "scalar"): simd_level()
// capped by LAYERKNN_CPU_SIMD, so tests can check which table a forced level really runs.
const char* active_kernel_table();

// The tile precisions the engine may use on this CPU, among "fp32", "bf16" (AVX512-BF16) and
// "int8" (AVX512-VNNI, or AVX2 without AVX-512); see LAYERKNN_CPU_KERNEL.
std::vector<std::string> tile_precisions();

}  // namespace layerknn::cpu
