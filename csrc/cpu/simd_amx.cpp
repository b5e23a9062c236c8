// AMX tiles for the CPU k-NN engine (Intel Sapphire Rapids and later; see knn_kernels.h): the
// AVX-512 bf16 and int8 tables with their GEMM replaced by the matrix unit's TDPBF16PS and
// TDPBUSD. Everything else is the AVX-512 tables' own code: statistics, packing (whose 48-row
// vector panels, [dpad/group][48][group], already are three AMX B tiles side by side, 192 bytes
// apart), scan and exact score. A tile block is 16 broadcast rows by one 48-column panel: three
// 16 x 16 accumulator tiles, one A tile of 16 rows x 64 bytes and three B tiles of 16 feature
// groups x 64 bytes. dpad is padded to whole 64-byte tile columns (32 bf16 or 64 int8 features;
// the packers fill the padding with zero codes), so the K loop has no tail.
//
// The windows of tile_windows.h hold unchanged: TDPBF16PS, like VDPBF16PS, multiplies bf16
// pairs exactly in fp32 and rounds each accumulation to nearest even (denormal inputs read as
// zero, outputs flushed: the 1e-30 term), at most dpad + 2 roundings per product in any order;
// TDPBUSD sums code products exactly in int32, so int8 tiles are bit-identical to VPDPBUSD's.
// The matrix unit needs the kernel's permission (Linux arch_prctl ARCH_REQ_XCOMP_PERM), asked
// once per process by amx_usable(); without it, or on other systems, the tables are not offered.
#include "cpu/arch.h"
#include "cpu/knn_kernels.h"

#if LAYERKNN_X86 && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define LAYERKNN_AMX_BUILT 1
#else
#define LAYERKNN_AMX_BUILT 0
#endif

#if LAYERKNN_AMX_BUILT
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers trip its own uninitialised-variable warning (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#define LAYERKNN_AMX \
  __attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace layerknn::cpu {
namespace {

constexpr int kRows = 16;   // broadcast rows per tile block (AMX tile rows)
constexpr int kPanel = 48;  // vector-side rows per panel (the AVX-512 tables' nr)
constexpr int kTileBytes = 64;

// The LDTILECFG operand (palette 1): tiles 0-2 accumulators, 3 the A tile, 4-6 the B tiles,
// all 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

LAYERKNN_AMX void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 7; ++t) {
    config.rows[t] = kRows;
    config.bytes_per_row[t] = kTileBytes;
  }
  _tile_loadconfig(&config);
}

// tile [rows_pad, lds] = broadcast [rows_pad, row_bytes] . vector^T, as fp32 (kInt8 false: bf16
// pairs) or int32 (kInt8: unsigned broadcast bytes by signed vector bytes) accumulators stored
// as they are. rows_pad: a multiple of 16; cols_pad: of 48; row_bytes: of the 64-byte tile row.
template <bool kInt8>
LAYERKNN_AMX inline void tile_gemm(const uint8_t* broadcast, int64_t rows_pad, const uint8_t* vector,
                                   int64_t cols_pad, int64_t row_bytes, void* tile, int64_t lds) {
  configure_tiles();
  char* out = static_cast<char*>(tile);
  const int64_t steps = row_bytes / kTileBytes;
  const int64_t panel_stride = kPanel * 4;           // bytes from one feature group to the next
  const int64_t step_bytes = 16 * panel_stride;      // one B tile's 16 feature groups
  for (int64_t c0 = 0; c0 < cols_pad; c0 += kPanel) {
    const uint8_t* panel = vector + c0 * row_bytes;  // [groups][48] x 4 bytes
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kRows) {
      const uint8_t* a = broadcast + r0 * row_bytes;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      for (int64_t s = 0; s < steps; ++s) {
        _tile_loadd(3, a + s * kTileBytes, row_bytes);
        const uint8_t* b = panel + s * step_bytes;
        _tile_loadd(4, b, panel_stride);
        _tile_loadd(5, b + kTileBytes, panel_stride);
        _tile_loadd(6, b + 2 * kTileBytes, panel_stride);
        if constexpr (kInt8) {
          _tile_dpbusd(0, 3, 4);
          _tile_dpbusd(1, 3, 5);
          _tile_dpbusd(2, 3, 6);
        } else {
          _tile_dpbf16ps(0, 3, 4);
          _tile_dpbf16ps(1, 3, 5);
          _tile_dpbf16ps(2, 3, 6);
        }
      }
      char* c = out + (r0 * lds + c0) * 4;
      _tile_stored(0, c, lds * 4);
      _tile_stored(1, c + kTileBytes, lds * 4);
      _tile_stored(2, c + 2 * kTileBytes, lds * 4);
    }
  }
  _tile_release();
}

LAYERKNN_AMX void gemm_bf16(const void* broadcast, int64_t rows_pad, const void* vector,
                            int64_t cols_pad, int64_t dpad, float* tile, int64_t lds,
                            const TileScales*) {
  tile_gemm<false>(static_cast<const uint8_t*>(broadcast), rows_pad,
                   static_cast<const uint8_t*>(vector), cols_pad, dpad * 2, tile, lds);
}

// The exact int32 code sums, then the AVX-512 int8 table's conversion to scores, operation for
// operation: tile[r][c] = float(acc - col_offset[c]) * col_scale[c] * row_scale[r].
LAYERKNN_AMX void gemm_int8(const void* broadcast, int64_t rows_pad, const void* vector,
                            int64_t cols_pad, int64_t dpad, float* tile, int64_t lds,
                            const TileScales* scales) {
  tile_gemm<true>(static_cast<const uint8_t*>(broadcast), rows_pad,
                  static_cast<const uint8_t*>(vector), cols_pad, dpad, tile, lds);
  for (int64_t r = 0; r < rows_pad; ++r) {
    const __m512 row_scale = _mm512_set1_ps(scales->row_scale[r]);
    float* line = tile + r * lds;
    for (int64_t c = 0; c < cols_pad; c += 16) {
      const __m512i acc = _mm512_loadu_si512(line + c);
      const __m512i offset = _mm512_loadu_si512(scales->col_offset + c);
      const __m512 exact_sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, offset));
      const __m512 col_scale = _mm512_loadu_ps(scales->col_scale + c);
      _mm512_storeu_ps(line + c, _mm512_mul_ps(_mm512_mul_ps(exact_sum, col_scale), row_scale));
    }
  }
}

// The AVX-512 broadcast packers pad to 8 rows; A tiles read 16, so the rows up to the next 16
// get the zero code too (bf16 0, int8 128 = q + 128 for q = 0).
template <const KernelSet* (*Base)(), int kZeroByte>
void pack_broadcast_side(const float* src, int64_t count, int64_t d, const float* scale,
                         int64_t dpad, void* dst) {
  const KernelSet* base = Base();
  base->pack_broadcast_side(src, count, d, scale, dpad, dst);
  const int64_t packed = (count + base->mr - 1) / base->mr * base->mr;
  const int64_t rows = (count + kRows - 1) / kRows * kRows;
  const int64_t row_bytes = dpad * base->elem_bytes;
  if (rows > packed)
    std::memset(static_cast<char*>(dst) + packed * row_bytes, kZeroByte, (rows - packed) * row_bytes);
}

// A table over the AVX-512 one it extends. `speedup` (the cost model's fallback; it measures the
// tiles itself, tile_rate.h): one Sapphire Rapids core, 192 x 192 tiles of d = 576, ran AMX bf16
// at 1306 GFLOP/s and int8 at 2383 against 184 for the AVX-512 fp32 tiles (bench/RESULTS.md).
KernelSet amx_table(const KernelSet& base, const char* name, decltype(KernelSet::gemm) gemm,
                    decltype(KernelSet::pack_broadcast_side) pack_broadcast, double speedup) {
  KernelSet table = base;
  table.name = name;
  table.mr = kRows;
  table.gemm = gemm;
  table.pack_broadcast_side = pack_broadcast;
  table.dpad_align = kTileBytes / base.elem_bytes;
  table.speedup = speedup;
  return table;
}

}  // namespace

bool amx_usable() {
  static const bool usable = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vnni")) return false;
    // The tile loads read the AVX-512 tables' packing as it is laid out today.
    for (const KernelSet* base : {avx512_bf16_kernels(), avx512_int8_kernels()})
      if (!base || base->nr != kPanel || base->group * base->elem_bytes != 4) return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const bool bf16 = edx & (1u << 22), tiles = edx & (1u << 24), int8 = edx & (1u << 25);
    if (!(bf16 && tiles && int8)) return false;
    constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return usable;
}

const KernelSet* amx_bf16_kernels() {
  static const KernelSet table =
      amx_table(*avx512_bf16_kernels(), "amx-bf16", gemm_bf16,
                pack_broadcast_side<avx512_bf16_kernels, 0>, 7.1);
  return &table;
}

const KernelSet* amx_int8_kernels() {
  static const KernelSet table =
      amx_table(*avx512_int8_kernels(), "amx-int8", gemm_int8,
                pack_broadcast_side<avx512_int8_kernels, 128>, 12.9);
  return &table;
}

}  // namespace layerknn::cpu

#else  // no AMX in this build (not x86 Linux, or a compiler without AMX intrinsics)

namespace layerknn::cpu {
bool amx_usable() { return false; }
const KernelSet* amx_bf16_kernels() { return nullptr; }
const KernelSet* amx_int8_kernels() { return nullptr; }
}  // namespace layerknn::cpu

#endif
