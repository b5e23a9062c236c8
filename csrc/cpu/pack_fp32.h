// fp32 operand packing shared by the scalar and AVX2 kernel tables (see knn_kernels.h for the
// layouts). Plain loops, instantiated inside each table's own translation unit and called from
// its (target-attributed) entry points, so the compiler inlines and vectorises them for that
// instruction set; both tables therefore pack the very same fp32 values x[t] * scale[r].
#pragma once
#include <cstdint>
#include <cstring>

namespace layerknn::cpu {

// src [count, d] rows, each times scale[r] (1 when scale is nullptr) -> dst [panels][dpad][kNr]
// column-interleaved panels of kNr rows, zero padded to whole panels and to dpad features.
template <int kNr>
inline void pack_fp32_vector_side(const float* src, int64_t count, int64_t d, const float* scale,
                                  int64_t dpad, float* dst) {
  const int64_t panels = (count + kNr - 1) / kNr;
  std::memset(dst, 0, sizeof(float) * panels * kNr * dpad);
  for (int64_t r = 0; r < count; ++r) {
    const float s = scale ? scale[r] : 1.f;
    float* panel = dst + (r / kNr) * kNr * dpad + (r % kNr);
    const float* row = src + r * d;
    for (int64_t t = 0; t < d; ++t) panel[t * kNr] = row[t] * s;
  }
}

// src [count, d] rows, each times scale[r] -> dst [round_up(count, kMr)][dpad] row-major, zero
// padded.
template <int kMr>
inline void pack_fp32_broadcast_side(const float* src, int64_t count, int64_t d,
                                     const float* scale, int64_t dpad, float* dst) {
  const int64_t rows = (count + kMr - 1) / kMr * kMr;
  std::memset(dst, 0, sizeof(float) * rows * dpad);
  for (int64_t r = 0; r < count; ++r) {
    const float s = scale ? scale[r] : 1.f;
    const float* row = src + r * d;
    float* out = dst + r * dpad;
    for (int64_t t = 0; t < d; ++t) out[t] = row[t] * s;
  }
}

}  // namespace layerknn::cpu
