// CPU stand-in for <cuda_fp16.h> and <cuda_bf16.h> (emulation build only): the two 16-bit GEMM
// operand types and their round-to-nearest-even conversions. fp16 is the compiler's _Float16
// (IEEE binary16, correctly rounded conversions); bf16 is the top half of an fp32, rounded to
// nearest even on the bits (inputs are finite: the Python layer rejects NaN/Inf).
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  _Float16 v;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline float __half2float(__half h) { return static_cast<float>(h.v); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
