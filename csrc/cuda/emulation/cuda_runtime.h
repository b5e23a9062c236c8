// CPU stand-in for <cuda_runtime.h>, used ONLY by the emulation test (emulate_kernels.cpp), which
// compiles the real kernel headers of csrc/cuda with g++ and runs each CUDA thread as a
// std::thread: warp intrinsics become 32-thread barriers plus a shared exchange slot, and
// __syncthreads a block-wide barrier. Slow, but it executes the very kernel code (and, under
// -fsanitize=thread, flags missing barriers) on machines without a GPU.
#pragma once
#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // function-local statics are shared by all emulated threads

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
using cudaStream_t = struct CUstream_st*;

inline int min(int a, int b) { return a < b ? a : b; }

namespace emu {

struct Warp {
  std::barrier<> bar{32};
  uint32_t slot[32];
};

inline dim3 grid_dim, block_dim;
inline thread_local dim3 thread_idx, block_idx;
inline thread_local Warp* warp = nullptr;
inline thread_local std::barrier<>* block_barrier = nullptr;
alignas(16) inline float4 dynamic_smem[256 * 1024 / 16];
alignas(16) inline unsigned char static_smem[64 * 1024];

inline int lane() { return static_cast<int>(thread_idx.x & 31u); }

template <class T>
uint32_t bits_of(T v) {
  static_assert(sizeof(T) == 4);
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}
template <class T>
T from_bits(uint32_t b) {
  T v;
  std::memcpy(&v, &b, 4);
  return v;
}

// Every lane publishes one word; `combine` reads all 32 after the barrier.
template <class F>
auto exchange(uint32_t word, F combine) {
  Warp& w = *warp;
  w.slot[lane()] = word;
  w.bar.arrive_and_wait();
  auto result = combine(w.slot);
  w.bar.arrive_and_wait();
  return result;
}

// Runs kernel() for every thread of every block; blocks one after another.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  grid_dim = grid;
  block_dim = block;
  const unsigned threads = block.x;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(threads);
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            thread_idx = dim3(t, 0, 0);
            block_idx = dim3(bx, by, bz);
            warp = warps[t / 32].get();
            block_barrier = &bar;
            kernel();
          });
        }
        for (auto& th : pool) th.join();
      }
}

}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define gridDim (emu::grid_dim)
#define blockDim (emu::block_dim)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp->bar.arrive_and_wait(); }
inline unsigned __ballot_sync(unsigned, bool p) {
  return emu::exchange(p ? 1u : 0u, [](const uint32_t* s) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= (s[i] != 0u ? 1u : 0u) << i;
    return r;
  });
}
template <class T>
T __shfl_sync(unsigned, T v, int src) {
  return emu::exchange(emu::bits_of(v), [src](const uint32_t* s) { return emu::from_bits<T>(s[src & 31]); });
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  const int me = emu::lane();
  return emu::exchange(emu::bits_of(v),
                       [me, mask](const uint32_t* s) { return emu::from_bits<T>(s[(me ^ mask) & 31]); });
}
inline unsigned __reduce_add_sync(unsigned, unsigned v) {
  return emu::exchange(v, [](const uint32_t* s) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r += s[i];
    return r;
  });
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }
template <class T>
T __ldg(const T* p) { return *p; }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_add(v);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

namespace layerknn::cuda::detail {
inline float4* emulated_dynamic_smem() { return emu::dynamic_smem; }
template <class T>
T* emulated_static_smem() { return reinterpret_cast<T*>(emu::static_smem); }
}  // namespace layerknn::cuda::detail
