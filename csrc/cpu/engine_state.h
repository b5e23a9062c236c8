// The state the CPU k-NN engine keeps while it works: per-row statistics of one layer
// (RowArrays), one layer in flight (LayerSlot), and each thread's scratch (Worker). Plain data
// shared by the scheduler (knn_cpu.cpp), the tile pass and the merge (row_merge.cpp).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "cpu/knn_kernels.h"
#include "cpu/tile_split.h"

namespace layerknn::cpu {

constexpr int64_t kBlock = 192;   // rows per tile side (multiple of every table's mr, nr)
constexpr int kVectorBlocks = 4;  // vector-side blocks packed at once (broadcast reuse)
constexpr int kMaxSplit = 16;     // most features split off int8 tiles (see split_width)

inline int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<unsigned char, FreeDeleter>;

inline AlignedBuffer aligned_buffer(int64_t bytes) {
  const size_t size = static_cast<size_t>(round_up(bytes > 64 ? bytes : 64, 64));
  void* p = std::aligned_alloc(64, size);
  if (!p) throw std::bad_alloc();
  return AlignedBuffer(static_cast<unsigned char*>(p));
}

// What the engine keeps per row of one side (queries x or database y) of one layer, as
// contiguous arrays the kernels can index by row.
struct RowArrays {
  std::vector<RowStats> stats;  // [rows]
  std::vector<float> scale;     // [rows] cosine scales (1 otherwise)
  std::vector<float> sqn;       // [rows] fp32 squared norms (squared-L2 keys)
  // int8 tiles: each row's quant_step, quant_scale and 128 x quant_sum; steps and offsets are
  // padded by a block so a tile's padding rows and columns read defined memory.
  std::vector<float> qstep, qscale;
  std::vector<int32_t> qoffset;
  // Centred, split low-precision tiles (tile_split.h): each row's shift fl <z, mu>, its split-off
  // values v as [rows, m] and transposed [m, rows], and |v|.
  std::vector<float> shift, split_v, split_vt;
  std::vector<double> split_norm;

  void allocate(int64_t rows, bool int8, bool split) {
    stats.resize(rows);
    scale.resize(rows);
    sqn.resize(rows);
    if (int8) {
      qstep.assign(round_up(rows, kBlock) + kBlock, 0.f);
      qscale.assign(rows, 0.f);
      qoffset.assign(round_up(rows, kBlock) + kBlock, 0);
    }
    if (split) {
      shift.assign(rows, 0.f);
      split_v.assign(rows * kMaxSplit, 0.f);
      split_vt.assign(rows * kMaxSplit, 0.f);
      split_norm.assign(rows, 0.);
    }
  }
  // Row i's statistics, and the int8 fields when with_int8.
  void store(int64_t i, const RowStats& row, bool with_int8) {
    scale[i] = row.scale;
    sqn[i] = row.sq_norm;
    if (with_int8) {
      qstep[i] = row.quant_step;
      qscale[i] = row.quant_scale;
      qoffset[i] = 128 * row.quant_sum;
    }
  }
};

// Everything the engine knows about one layer while it computes it.
struct LayerSlot {
  int64_t layer = -1;
  RowArrays x, y;                 // y unused in the self-join (the database side is x)
  const KernelSet* ks = nullptr;  // tile kernels chosen for this layer
  int64_t dpad = 0;               // feature dimension padded for ks
  std::vector<float> windows;     // [n] 2 x bound on row i's tile key errors (tile_windows.h)
  LayerSplit split;               // active: int8 tiles read centred, split rows (tile_split.h)
};

// Per-thread scratch: packed panels, the score tile and the merge buffers.
struct Worker {
  // Packed blocks kept across tiles: vector side for blocks I = kVectorBlocks * q + s in slot
  // s, broadcast side for one block J. Tiles run J-outer over a group of kVectorBlocks I
  // blocks, so each broadcast block is packed once per group instead of once per tile.
  AlignedBuffer vector_panel[kVectorBlocks];
  AlignedBuffer broadcast_panel;
  AlignedBuffer centred;  // [kBlock, d] centred rows for split int8 packing
  int64_t vector_key[kVectorBlocks] = {-1, -1, -1, -1};  // layer * blocks + block, or -1
  int64_t broadcast_key = -1;
  std::vector<float> tile;  // [kBlock, kTileStride] scores / keys
  void forget() {
    for (auto& key : vector_key) key = -1;
    broadcast_key = -1;
  }
  std::vector<float> keys, sorted_keys, exact;
  std::vector<int32_t> ids;
  std::vector<const float*> rows;
  std::vector<float> row_scales;
  std::vector<std::pair<float, int32_t>> ranked;
  std::vector<float> place_keys;  // write_row's scratch: ranked split for place_best
  std::vector<int32_t> place_ids;
  // A solo layer's surviving candidates, row after row (finish_solo_layer): ids, exact keys
  // once scored, where each row starts, which rows are scanned exactly instead; and which
  // pair_keys entries the row being scored still has to fill.
  std::vector<int32_t> pair_ids;
  std::vector<float> pair_keys;
  std::vector<int64_t> pair_start, slots;
  std::vector<uint8_t> scanned;
  // How the rows finished since the last reset fared: rows, re-scored candidates, overflows.
  int64_t rows_done = 0, rescored = 0, overflows = 0;
  // This worker's last layer's low-precision tiles, if they stayed well inside their window
  // (the next layer then uses them without sampling); nullptr otherwise.
  const KernelSet* trusted = nullptr;
};

}  // namespace layerknn::cpu
