// Host/device portability macro for the maths shared by the CPU and CUDA engines.
// Every function marked LAYERKNN_HD compiles as plain inline C++ in the CPU build and as a
// __host__ __device__ function under nvcc, so both backends run literally the same code for
// scoring, tie order and set intersection.
#pragma once

#if defined(__CUDACC__)
#define LAYERKNN_HD __host__ __device__ __forceinline__
#else
#define LAYERKNN_HD inline
#endif

#include <cstdint>
