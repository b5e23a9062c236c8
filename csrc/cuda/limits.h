// Size limits of the CUDA engine, checked on the host before anything is allocated or launched.
// Plain C++ (no CUDA headers), so every build of _core can run these checks and the Python layer
// can refuse a problem with a clear ValueError before it allocates outputs on the device. The
// kernels index rows, columns and features with 32-bit ints (64-bit only for whole-array
// offsets) and launch at most 65535 blocks along grid y/z and 2^31 - 1 along grid x.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace layerknn::cuda::limits {

constexpr int kMaxK = 256;                            // largest k bucket of the fused kernel
constexpr int64_t kMaxGridX = 2147483647;             // gridDim.x limit (compute capability >= 3.0)
constexpr int64_t kMaxGridYZ = 65535;                 // gridDim.y and gridDim.z limit
// Rows (n, m) and features (d) must leave room for a tile's worth of 32-bit index arithmetic
// past the end (row0 + BM, col0 + kTileN, stage * kTileK + 16 all stay below 2^31).
constexpr int64_t kMaxExtent = 2147483647 - 256;
constexpr int64_t kRowsPerBlock = 8;                  // norms and merge kernels: 8 rows per block
constexpr int64_t kPromptsPerBlock = 256;             // overlap kernels: one thread per prompt
constexpr int kMaxOverlapK = 65535;                   // per-prompt counts are uint16

// Checks a k-NN problem of L layers of n query rows (m database rows, m = n for the self-join)
// of width d; throws std::invalid_argument naming the bound and the value received.
inline void check_knn(int64_t L, int64_t n, int64_t m, int64_t d, int64_t k, bool self_join,
                      bool exclude_self) {
  const auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (L < 0 || n < 0 || m < 0 || d < 0) {
    fail("shapes must be non-negative, got L=" + std::to_string(L) + ", n=" + std::to_string(n) +
         ", m=" + std::to_string(m) + ", d=" + std::to_string(d));
  }
  const auto extent = [&](const char* name, int64_t v) {
    if (v > kMaxExtent) {
      fail(std::string(name) + " must be at most " + std::to_string(kMaxExtent) +
           " for the CUDA engine (32-bit row and feature indices), got " + std::to_string(v) +
           "; use the CPU engine");
    }
  };
  extent("n (query rows)", n);
  extent(self_join ? "n (rows)" : "m (database rows)", m);
  extent("d (features)", d);
  if (k > kMaxK) {
    fail("k must be at most " + std::to_string(kMaxK) +
         " on the GPU (largest CUDA k bucket), got " + std::to_string(k) +
         "; use the CPU engine for larger k");
  }
  const int64_t limit = m - ((self_join && exclude_self) ? 1 : 0);
  if (n > 0 && L > 0 && (k < 1 || k > limit)) {
    fail("k must be in [1, " + std::to_string(limit) + "], got " + std::to_string(k));
  }
}

// Most layers one launch may cover for rows of n queries and m database rows: gridDim.y of the
// fused kernel, and gridDim.x of the norms / merge kernels (kRowsPerBlock rows per block).
inline int64_t knn_layers_per_launch(int64_t n, int64_t m) {
  const int64_t rows = std::max<int64_t>({n, m, 1});
  return std::max<int64_t>(1, std::min(kMaxGridYZ, kMaxGridX * kRowsPerBlock / rows));
}

// Checks an overlap problem (neighbour lists [La, n, ka] and [Lb, n, kb], first k columns).
inline void check_overlap(int64_t La, int64_t Lb, int64_t n, int64_t ka, int64_t kb, int64_t k) {
  if (La < 0 || Lb < 0 || n < 0) {
    throw std::invalid_argument("shapes must be non-negative, got La=" + std::to_string(La) +
                                ", Lb=" + std::to_string(Lb) + ", n=" + std::to_string(n));
  }
  if (k < 1 || k > ka || k > kb || k > kMaxOverlapK) {
    throw std::invalid_argument("k must be in [1, min(ka, kb, " + std::to_string(kMaxOverlapK) +
                                ")] = [1, " + std::to_string(std::min<int64_t>({ka, kb, kMaxOverlapK})) +
                                "], got " + std::to_string(k));
  }
  if (n > kMaxGridX * kPromptsPerBlock) {
    throw std::invalid_argument("n (prompts) must be at most " +
                                std::to_string(kMaxGridX * kPromptsPerBlock) +
                                " for the CUDA overlap engine (grid limit), got " + std::to_string(n));
  }
}

// Most layers of one side whose rows (n per layer) one sort launch may cover.
inline int64_t overlap_layers_per_launch(int64_t n) {
  return std::max<int64_t>(1, kMaxGridX * kPromptsPerBlock / std::max<int64_t>(n, 1));
}

// Converts a block count to a gridDim component, refusing one beyond `limit`.
inline unsigned grid_extent(int64_t blocks, int64_t limit, const char* axis) {
  if (blocks < 1 || blocks > limit) {
    throw std::invalid_argument(std::string("CUDA launch: grid ") + axis + " of " +
                                std::to_string(blocks) + " blocks is outside [1, " +
                                std::to_string(limit) + "]");
  }
  return static_cast<unsigned>(blocks);
}

}  // namespace layerknn::cuda::limits
