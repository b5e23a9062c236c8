// The one place kernels are launched from host code: launch_kernel(kernel, grid, block,
// shared_bytes, stream, args...) is a checked triple-chevron launch under nvcc, and in the CPU
// emulation build (csrc/cuda/emulation) it runs the same kernel on the emulator, so the host
// drivers (splits, layer chunking, out-of-memory fallbacks) are exercised without a GPU too.
// Every launch checks its shape first and cudaGetLastError after; with LAYERKNN_CUDA_SYNC=1 in
// the environment it also synchronises the stream, so a faulting kernel is reported at its own
// launch. finish_call() closes each public entry point (knn, overlap) the same way.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/cuda_check.cuh"

namespace layerknn::cuda::detail {

// True when LAYERKNN_CUDA_SYNC is set to anything but "" or "0". Read at every launch, so it can
// be switched on from Python (os.environ) between calls; a getenv costs nothing next to a launch.
inline bool sync_launches() {
  const char* v = std::getenv("LAYERKNN_CUDA_SYNC");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

inline std::string launch_shape(dim3 grid, dim3 block) {
  return "grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
         std::to_string(grid.z) + "), block " + std::to_string(block.x);
}

// Refuses a launch shape the hardware cannot run (an internal error: the drivers size their
// grids within these limits, see limits.h), before anything is enqueued.
inline void check_launch_shape(dim3 grid, dim3 block) {
  if (grid.x < 1 || grid.y < 1 || grid.y > 65535 || grid.z < 1 || grid.z > 65535 || block.x < 1 ||
      block.x * block.y * block.z > 1024) {
    throw std::logic_error("layerknn CUDA engine: invalid launch shape " + launch_shape(grid, block));
  }
}

template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, Args... args) {
  check_launch_shape(grid, block);
#if defined(LAYERKNN_CUDA_EMULATION)
  (void)shared_bytes;
  emu::launch(grid, block, [&] { kernel(static_cast<Params>(args)...); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(args)...);
#endif
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_launches()) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw_cuda_error(err, ("kernel launch with " + launch_shape(grid, block)).c_str(), __FILE__,
                     __LINE__);
  }
}

// Closes a public entry point after its last launch: always cudaGetLastError (a fault already
// recorded by the runtime is reported here, at the layerknn call, not at some later call); with
// LAYERKNN_CUDA_SYNC=1 also a stream synchronisation, so every fault of the call surfaces here.
inline void finish_call(cudaStream_t stream, const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_launches()) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) {
    throw_cuda_error(err, (std::string(what) + (sync_launches() ? "" :
                           " (set LAYERKNN_CUDA_SYNC=1 to stop at the failing kernel)")).c_str(),
                     __FILE__, __LINE__);
  }
}

}  // namespace layerknn::cuda::detail
