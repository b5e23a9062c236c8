// Error checking and small RAII helpers shared by the CUDA engine's host code: the
// LAYERKNN_CUDA_CHECK macro (throws std::runtime_error naming the call, file and line), a guard
// that switches to the requested device and restores the caller's device, and a stream-ordered
// temporary buffer whose allocation may fail softly so callers can split work on out-of-memory.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace layerknn::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" +
                           cudaGetErrorName(err) + ") in " + call + " at " + file + ":" +
                           std::to_string(line));
}

}  // namespace layerknn::cuda::detail

#define LAYERKNN_CUDA_CHECK(call)                                                      \
  do {                                                                                 \
    const cudaError_t layerknn_err_ = (call);                                          \
    if (layerknn_err_ != cudaSuccess) {                                                \
      ::layerknn::cuda::detail::throw_cuda_error(layerknn_err_, #call, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)

namespace layerknn::cuda::detail {

// Makes `device` current for the lifetime of the guard, then restores the previous device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LAYERKNN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) LAYERKNN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// A temporary device buffer allocated and freed in the order of `stream`. try_allocate returns
// false (and clears the error) when the device is out of memory, so the caller can retry with a
// smaller piece of work; any other failure throws. Plain cudaMalloc / synchronise + cudaFree is
// used instead of the stream-ordered pool when the device reports no memory pools, when
// cudaMallocAsync answers "not supported" (some drivers, virtualised or MIG setups), or when
// LAYERKNN_CUDA_POOL=0 is set (to test that path on any GPU).
class StreamBuffer {
 public:
  explicit StreamBuffer(cudaStream_t stream) : stream_(stream) {}
  ~StreamBuffer() { release(); }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;

  bool try_allocate(size_t bytes) {
    release();
    if (bytes == 0) return true;
    async_ = pools_usable();
    cudaError_t err = cudaSuccess;
    if (async_) {
      err = cudaMallocAsync(&ptr_, bytes, stream_);
      if (err == cudaErrorNotSupported || err == cudaErrorInvalidValue) {
        cudaGetLastError();  // the pool is unusable here: fall back for this buffer
        async_ = false;
      }
    }
    if (!async_) err = cudaMalloc(&ptr_, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the (non-sticky) allocation error
      ptr_ = nullptr;
      return false;
    }
    LAYERKNN_CUDA_CHECK(err);
    return true;
  }

  bool stream_ordered() const { return async_; }

  void release() noexcept {
    if (ptr_ == nullptr) return;
    if (async_) {
      cudaFreeAsync(ptr_, stream_);
    } else {
      cudaStreamSynchronize(stream_);
      cudaFree(ptr_);
    }
    ptr_ = nullptr;
  }

  template <class T>
  T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  static bool pools_usable() {
    const char* env = std::getenv("LAYERKNN_CUDA_POOL");
    if (env != nullptr && std::string(env) == "0") return false;
    int device = 0, pools = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
      cudaGetLastError();  // an unknown attribute on an old driver means no pools
      return false;
    }
    return pools != 0;
  }

  cudaStream_t stream_;
  void* ptr_ = nullptr;
  bool async_ = true;
};

// Rounds a byte count up to a multiple of 256 so sub-buffers carved from one allocation stay
// aligned for vector loads.
inline size_t align_bytes(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace layerknn::cuda::detail
