// The one place kernels are launched from host code: launch_kernel(kernel, grid, block,
// shared_bytes, stream, args...) is a checked triple-chevron launch under nvcc, and in the CPU
// emulation build (csrc/cuda/emulation) it runs the same kernel on the emulator, so the host
// drivers (splits, layer chunking, out-of-memory fallbacks) are exercised without a GPU too.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/cuda_check.cuh"

namespace layerknn::cuda::detail {

template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, Args... args) {
#if defined(LAYERKNN_CUDA_EMULATION)
  (void)shared_bytes;
  (void)stream;
  emu::launch(grid, block, [&] { kernel(static_cast<Params>(args)...); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(args)...);
#endif
  LAYERKNN_CUDA_CHECK_LAUNCH();
}

}  // namespace layerknn::cuda::detail
