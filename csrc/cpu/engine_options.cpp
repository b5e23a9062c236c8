// Run-time feature tests and environment overrides of the CPU k-NN engine (see
// engine_options.h). The feature tests are x86-only (LAYERKNN_X86, see arch.h); elsewhere the
// engine runs the scalar table and these report "scalar" / fp32 only.
#include "cpu/engine_options.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>

#include "cpu/arch.h"

namespace layerknn::cpu {
namespace {

enum class Level { Scalar = 0, Avx2 = 1, Avx512 = 2 };

Level cpu_level() {
#if LAYERKNN_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Level::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Level::Avx2;
#endif
  return Level::Scalar;
}

bool cpu_has_bf16() {
#if LAYERKNN_X86
  return cpu_level() == Level::Avx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool cpu_has_vnni() {
#if LAYERKNN_X86
  return cpu_level() == Level::Avx512 && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

std::string env_value(const char* name) {
  const char* v = std::getenv(name);
  std::string s = v ? v : "";
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s.empty() ? "auto" : s;
}

// The processor's level capped by LAYERKNN_CPU_SIMD.
Level allowed_level() {
  Level level = cpu_level();
  const std::string simd = env_value("LAYERKNN_CPU_SIMD");
  if (simd == "scalar") {
    level = Level::Scalar;
  } else if (simd == "avx2") {
    level = std::min(level, Level::Avx2);
  } else if (simd != "auto" && simd != "avx512") {
    throw std::invalid_argument("LAYERKNN_CPU_SIMD must be auto, avx512, avx2 or scalar, got '" +
                                simd + "'");
  }
  return level;
}

// AMX tiles in place of the AVX-512 bf16/int8 ones: usable (amx_usable) and not refused by
// LAYERKNN_CPU_AMX=off.
bool amx_allowed(Level level) {
  const std::string amx = env_value("LAYERKNN_CPU_AMX");
  if (amx != "auto" && amx != "off")
    throw std::invalid_argument("LAYERKNN_CPU_AMX must be auto or off, got '" + amx + "'");
  return level == Level::Avx512 && amx == "auto" && amx_usable();
}

const KernelSet* fp32_table(Level level) {
  if (level == Level::Avx512 && avx512_kernels()) return avx512_kernels();
  if (level >= Level::Avx2 && avx2_kernels()) return avx2_kernels();
  return scalar_kernels();
}

}  // namespace

KernelChoice choose_kernels(Metric metric, int64_t d) {
  const Level level = allowed_level();
  const std::string kernel = env_value("LAYERKNN_CPU_KERNEL");
  if (kernel != "auto" && kernel != "fp32" && kernel != "bf16" && kernel != "int8") {
    throw std::invalid_argument("LAYERKNN_CPU_KERNEL must be auto, fp32, bf16 or int8, got '" +
                                kernel + "'");
  }
  KernelChoice choice;
  choice.fp32 = fp32_table(level);
  const bool automatic = kernel == "auto" && metric == Metric::Cosine;
  const bool amx = amx_allowed(level);
  if (level == Level::Avx512 && (automatic || kernel == "bf16") && cpu_has_bf16() &&
      avx512_bf16_kernels()) {
    choice.bf16 = amx ? amx_bf16_kernels() : avx512_bf16_kernels();
    if (kernel == "bf16") choice.forced = choice.bf16;
  }
  if (level == Level::Avx512 && (automatic || kernel == "int8") && cpu_has_vnni() &&
      avx512_int8_kernels() && (d + 3) / 4 * 4 <= kMaxInt8Features) {
    choice.int8 = amx ? amx_int8_kernels() : avx512_int8_kernels();
    if (kernel == "int8") choice.forced = choice.int8;
  }
  // Without AVX-512, int8 tiles by VPMADDUBSW (simd_avx2_int8.cpp) beat the AVX2 fp32 tiles.
  if (level == Level::Avx2 && cpu_level() == Level::Avx2 && (automatic || kernel == "int8") &&
      avx2_int8_kernels() && (d + 3) / 4 * 4 <= kMaxInt8Features) {
    choice.int8 = avx2_int8_kernels();
    if (kernel == "int8") choice.forced = choice.int8;
  }
  const std::string split = env_value("LAYERKNN_CPU_SPLIT");
  if (split != "auto" && split != "off")
    throw std::invalid_argument("LAYERKNN_CPU_SPLIT must be auto or off, got '" + split + "'");
  // The split's tile terms run AVX2 code on x86 (tile_split.cpp): not for the scalar table.
  choice.split = metric != Metric::SquaredL2 && split == "auto" && level >= Level::Avx2;
  return choice;
}

const char* simd_level() {
  switch (cpu_level()) {
    case Level::Avx512:
      return amx_usable() ? "avx512-amx" : cpu_has_bf16() ? "avx512-bf16" : "avx512";
    case Level::Avx2:
      return "avx2";
    default:
      return "scalar";
  }
}

const char* active_kernel_table() { return fp32_table(allowed_level())->name; }

std::vector<std::string> tile_precisions() {
  std::vector<std::string> out = {"fp32"};
  if (cpu_has_bf16() && avx512_bf16_kernels()) out.push_back("bf16");
  if (cpu_has_vnni() && avx512_int8_kernels()) out.push_back("int8");
  if (cpu_level() == Level::Avx2 && avx2_int8_kernels()) out.push_back("int8");
  return out;
}

}  // namespace layerknn::cpu
