// CPU stand-in for <cuda_runtime.h>, used ONLY by the emulation test (emulate_kernels.cpp), which
// compiles the real kernel headers of csrc/cuda with g++ and runs each CUDA thread as a fiber
// (or, with -DLAYERKNN_EMU_OS_THREADS, an OS thread so -fsanitize=thread can flag missing
// barriers): warp intrinsics become 32-thread barriers plus a shared exchange slot, and
// __syncthreads a block-wide barrier. Slow, but it runs the very kernel code without a GPU.
#pragma once
#include <math.h>

#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <barrier>
#include <cstddef>
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

#if defined(LAYERKNN_EMU_OS_THREADS)
// One OS thread per CUDA thread (slow; lets -fsanitize=thread check the kernels' barriers).
using Barrier = std::barrier<>;
inline void arrive_and_wait(Barrier& b) { b.arrive_and_wait(); }
#else
// One user-space fiber per CUDA thread, run by a round-robin scheduler on the calling thread:
// a fiber runs until it waits at a barrier, so a barrier some thread never reaches (a divergence
// deadlock on the GPU) is detected and aborts instead of hanging.
struct Barrier {
  explicit Barrier(int n) : participants(n) {}
  int participants, count = 0;
  unsigned generation = 0;
};
#endif

struct Warp {
  Barrier bar{32};
  uint32_t slot[32];
};

struct ThreadState {
  dim3 thread_idx, block_idx;
  Warp* warp = nullptr;
  Barrier* block_barrier = nullptr;
#if !defined(LAYERKNN_EMU_OS_THREADS)
  ucontext_t context;  // the fiber's first entry (makecontext on its own stack)
  jmp_buf resume;      // where a suspended fiber continues
  bool started = false;
  bool done = false;
  Barrier* waiting_on = nullptr;
  unsigned waiting_generation = 0;
#endif
};

inline dim3 grid_dim, block_dim;
// Test hooks counted by the re-rank kernel: rows scanned exactly (candidate count -1) and the
// candidates of the others, so tests see how much a candidate path pruned.
inline std::atomic<long long> rerank_scanned{0}, rerank_candidates{0};
alignas(16) inline float4 dynamic_smem[256 * 1024 / 16];
alignas(16) inline unsigned char static_smem[64 * 1024];

#if defined(LAYERKNN_EMU_OS_THREADS)
inline thread_local ThreadState* current = nullptr;
#else
inline ThreadState* current = nullptr;
inline ucontext_t scheduler_context;
inline jmp_buf scheduler_resume;
inline const std::function<void()>* running_kernel = nullptr;

inline void arrive_and_wait(Barrier& b) {
  const unsigned generation = b.generation;
  if (++b.count == b.participants) {
    b.count = 0;
    ++b.generation;
    return;
  }
  current->waiting_on = &b;
  current->waiting_generation = generation;
  // Switch by _setjmp/_longjmp (no signal-mask system call, unlike swapcontext: ~50x faster).
  if (_setjmp(current->resume) == 0) _longjmp(scheduler_resume, 1);
}

inline void fiber_entry() {
  (*running_kernel)();
  current->done = true;
  _longjmp(scheduler_resume, 1);  // never returns: the fiber's stack is abandoned
}
#endif

inline int lane() { return static_cast<int>(current->thread_idx.x & 31u); }

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
  Warp& w = *current->warp;
  w.slot[lane()] = word;
  arrive_and_wait(w.bar);
  auto result = combine(w.slot);
  arrive_and_wait(w.bar);
  return result;
}

// Runs kernel() for every thread of every block; blocks one after another.
inline unsigned max_grid_z = 0;  // largest gridDim.z launched (tests check database splits)
inline int launches = 0;         // kernel launches so far (tests count them)
inline int fault_at_launch = 0;  // > 0: that launch "faults" (sets a sticky error, see below)
inline void record_fault();

inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  if (++launches == fault_at_launch) record_fault();
  max_grid_z = std::max(max_grid_z, grid.z);
  grid_dim = grid;
  block_dim = block;
  const unsigned threads = block.x;
#if !defined(LAYERKNN_EMU_OS_THREADS)
  constexpr size_t kStack = 256 * 1024;
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() < threads) stacks.push_back(std::make_unique<char[]>(kStack));
  running_kernel = &kernel;
#endif
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Barrier bar(static_cast<int>(threads));
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<Warp>());
        std::vector<ThreadState> state(threads);
        for (unsigned t = 0; t < threads; ++t) {
          state[t].thread_idx = dim3(t, 0, 0);
          state[t].block_idx = dim3(bx, by, bz);
          state[t].warp = warps[t / 32].get();
          state[t].block_barrier = &bar;
        }
#if defined(LAYERKNN_EMU_OS_THREADS)
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            current = &state[t];
            kernel();
          });
        }
        for (auto& th : pool) th.join();
#else
        for (unsigned t = 0; t < threads; ++t) {
          getcontext(&state[t].context);
          state[t].context.uc_stack.ss_sp = stacks[t].get();
          state[t].context.uc_stack.ss_size = kStack;
          state[t].context.uc_link = &scheduler_context;
          makecontext(&state[t].context, fiber_entry, 0);
        }
        for (;;) {
          bool alive = false, progress = false;
          for (auto& th : state) {
            if (th.done) continue;
            alive = true;
            if (th.waiting_on != nullptr && th.waiting_on->generation == th.waiting_generation) {
              continue;  // still blocked
            }
            th.waiting_on = nullptr;
            progress = true;
            current = &th;
            if (_setjmp(scheduler_resume) == 0) {
              if (th.started) _longjmp(th.resume, 1);
              th.started = true;
              swapcontext(&scheduler_context, &th.context);  // first entry only
            }
          }
          if (!alive) break;
          if (!progress) {
            std::fprintf(stderr, "emulation: deadlock - a barrier is never reached by all threads\n");
            std::abort();
          }
        }
#endif
      }
}

}  // namespace emu

#define threadIdx (emu::current->thread_idx)
#define blockIdx (emu::current->block_idx)
#define gridDim (emu::grid_dim)
#define blockDim (emu::block_dim)

inline void __syncthreads() { emu::arrive_and_wait(*emu::current->block_barrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::arrive_and_wait(emu::current->warp->bar); }
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


// ---- Runtime API subset used by the host drivers (one emulated device, host memory) ---------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorIllegalAddress = 700,
  cudaErrorNotSupported = 801,
};
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMemoryPoolsSupported = 115 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace emu {
inline int sm_count = 4;                     // small, so the drivers split work as on a big GPU
inline size_t memory_budget = SIZE_MAX;      // temporaries beyond this fail with out-of-memory
inline size_t memory_in_use = 0;
inline int allocation_failures = 0;
inline bool memory_pools = true;
inline cudaError_t malloc_async_error = cudaSuccess;  // what cudaMallocAsync answers, if not success
inline int async_allocations = 0, plain_allocations = 0, synchronizations = 0;
inline cudaError_t pending_error = cudaSuccess;       // returned (and cleared) by cudaGetLastError
inline void record_fault() { pending_error = cudaErrorIllegalAddress; }
inline std::vector<std::pair<void*, size_t>> allocations;
constexpr int kMaxDynamicSmem = 227 * 1024;  // sm_90 opt-in limit

inline cudaError_t allocate(void** ptr, size_t bytes) {
  if (memory_in_use + bytes > memory_budget) {
    ++allocation_failures;
    return cudaErrorMemoryAllocation;
  }
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  memory_in_use += bytes;
  allocations.emplace_back(*ptr, bytes);
  return cudaSuccess;
}
inline cudaError_t release(void* ptr) {
  for (auto it = allocations.begin(); it != allocations.end(); ++it) {
    if (it->first == ptr) {
      memory_in_use -= it->second;
      allocations.erase(it);
      std::free(ptr);
      return cudaSuccess;
    }
  }
  return cudaErrorInvalidValue;
}
}  // namespace emu

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInsufficientDriver: return "driver insufficient";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "invalid argument";
  }
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorInvalidValue";
  }
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::pending_error;
  emu::pending_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMultiProcessorCount ? emu::sm_count : (emu::memory_pools ? 1 : 0);
  return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  if (emu::malloc_async_error != cudaSuccess) return emu::malloc_async_error;
  ++emu::async_allocations;
  return emu::allocate(p, bytes);
}
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  ++emu::plain_allocations;
  return emu::allocate(p, bytes);
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return emu::release(p); }
inline cudaError_t cudaFree(void* p) { return emu::release(p); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++emu::synchronizations;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int value) {
  return value <= emu::kMaxDynamicSmem ? cudaSuccess : cudaErrorInvalidValue;
}
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F, int, size_t smem) {
  *blocks = smem > emu::kMaxDynamicSmem ? 0 : static_cast<int>(std::min<size_t>(4, (228 * 1024) / (smem + 1024)));
  return cudaSuccess;
}

namespace layerknn::cuda::detail {
inline float4* emulated_dynamic_smem() { return emu::dynamic_smem; }
template <class T>
T* emulated_static_smem() { return reinterpret_cast<T*>(emu::static_smem); }
}  // namespace layerknn::cuda::detail
