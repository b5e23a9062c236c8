// The CPU k-NN engine (see knn_cpu.h): exact top-k per row from blocked GEMM tiles fused with
// per-row candidate selection; no n x n score matrix and no full copy of the input ever exists.
// Self-join symmetry: a layer's rows are cut into 192-row blocks and only tiles (I, J) with
// I <= J are computed (diagonal tiles only down to their upper triangle); each tile feeds the
// rows of I (column scan) and the rows of J (row scan).
// Races are avoided by ownership: a "solo" layer belongs to one worker from start to finish,
// and in a "shared" layer every worker fills private candidate lists merged after a barrier.
// Tile scores are approximate (fp32 in GEMM order, bf16 products, or exact sums of int8 codes of
// per-row quantised rows; a per-layer sample picks the cheapest): lists keep every candidate
// within a rigorous error window of the k-th best key, and the merge re-scores them with the
// exact fp32 score of knn_kernels.h (bitwise symmetric, so a solo layer scores a mutual candidate
// pair once) before the final ordered selection, so results never depend on the kernel, the
// precision or the thread count.
#include "cpu/knn_cpu.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/knn_kernels.h"
#include "cpu/parallel.h"
#include "cpu/safe_range.h"
#include "cpu/topk_candidates.h"

namespace layerknn::cpu {
namespace {

constexpr int64_t kBlock = 192;        // rows per tile side (multiple of every table's mr, nr)
constexpr int kVectorBlocks = 4;       // vector-side blocks packed at once (broadcast reuse)
constexpr int64_t kTileStride = 192;   // floats per tile line (multiple of 16 and of every nr)
constexpr int64_t kStatsChunk = 64;    // rows per statistics task
constexpr int64_t kMergeChunk = 32;    // rows per merge task
constexpr double kUnit = 1.0 / 16777216.0;  // fp32 unit roundoff 2^-24

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// ---- kernel choice -----------------------------------------------------------------------------

enum class Level { Scalar = 0, Avx2 = 1, Avx512 = 2 };

Level cpu_level() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Level::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Level::Avx2;
#endif
  return Level::Scalar;
}

bool cpu_has_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return cpu_level() == Level::Avx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool cpu_has_vnni() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return cpu_level() == Level::Avx512 && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

std::string env_value(const char* name) {
  const char* v = std::getenv(name);
  std::string s = v ? v : "";
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s.empty() ? "auto" : s;
}

// The kernel tables one call may use: fp32 tiles always, low-precision tiles where allowed.
struct KernelChoice {
  const KernelSet* fp32 = nullptr;
  const KernelSet* bf16 = nullptr;    // nullptr: not available or not wanted
  const KernelSet* int8 = nullptr;    // likewise
  const KernelSet* forced = nullptr;  // LAYERKNN_CPU_KERNEL=bf16|int8: skip the per-layer choice
};

// LAYERKNN_CPU_SIMD=auto|avx512|avx2|scalar caps the instruction set (for testing);
// LAYERKNN_CPU_KERNEL=auto|fp32|bf16|int8 picks the tile precision: auto considers bf16 tiles
// (AVX512-BF16) and int8 tiles (AVX512-VNNI) for cosine and lets a per-layer sample pick the
// cheapest; bf16 or int8 forces that precision for every metric where the CPU has it; fp32 never
// uses low precision. Results are identical either way (exact re-scoring).
KernelChoice choose_kernels(Metric metric, int64_t d) {
  Level level = cpu_level();
  const std::string simd = env_value("LAYERKNN_CPU_SIMD");
  if (simd == "scalar") {
    level = Level::Scalar;
  } else if (simd == "avx2") {
    level = std::min(level, Level::Avx2);
  } else if (simd != "auto" && simd != "avx512") {
    throw std::invalid_argument("LAYERKNN_CPU_SIMD must be auto, avx512, avx2 or scalar, got '" +
                                simd + "'");
  }
  const std::string kernel = env_value("LAYERKNN_CPU_KERNEL");
  if (kernel != "auto" && kernel != "fp32" && kernel != "bf16" && kernel != "int8") {
    throw std::invalid_argument("LAYERKNN_CPU_KERNEL must be auto, fp32, bf16 or int8, got '" +
                                kernel + "'");
  }
  KernelChoice choice;
  if (level == Level::Avx512 && avx512_kernels()) {
    choice.fp32 = avx512_kernels();
  } else if (level >= Level::Avx2 && avx2_kernels()) {
    choice.fp32 = avx2_kernels();
  } else {
    choice.fp32 = scalar_kernels();
  }
  const bool automatic = kernel == "auto" && metric == Metric::Cosine;
  if (level == Level::Avx512 && (automatic || kernel == "bf16") && cpu_has_bf16() &&
      avx512_bf16_kernels()) {
    choice.bf16 = avx512_bf16_kernels();
    if (kernel == "bf16") choice.forced = choice.bf16;
  }
  if (level == Level::Avx512 && (automatic || kernel == "int8") && cpu_has_vnni() &&
      avx512_int8_kernels() && round_up(d, 4) <= kMaxInt8Features) {
    choice.int8 = avx512_int8_kernels();
    if (kernel == "int8") choice.forced = choice.int8;
  }
  return choice;
}

// ---- small helpers -----------------------------------------------------------------------------

// Most rows end with a few dozen exactly scored candidates at most; selecting the k best of
// so few by sorting is dominated by mispredicted compares.
constexpr int kPlaceLimit = 64;

// Writes the k best of `count` <= kPlaceLimit candidates (keys [count], distinct ids [count]),
// best first by ranks_before, to out_keys/out_ids [k]: each candidate's place is the number
// of candidates that rank before it, counted with branch-free compares that vectorise.
__attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
void place_best(const float* keys, const int32_t* ids, int count, int k, float* out_keys,
                int32_t* out_ids) {
  for (int i = 0; i < count; ++i) {
    const float key = keys[i];
    const int32_t id = ids[i];
    int place = 0;
    for (int j = 0; j < count; ++j)
      place += int(keys[j] > key) | (int(keys[j] == key) & int(ids[j] < id));
    if (place < k) {
      out_keys[place] = key;
      out_ids[place] = id;
    }
  }
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<unsigned char, FreeDeleter>;

AlignedBuffer aligned_buffer(int64_t bytes) {
  const size_t size = static_cast<size_t>(round_up(std::max<int64_t>(bytes, 64), 64));
  void* p = std::aligned_alloc(64, size);
  if (!p) throw std::bad_alloc();
  return AlignedBuffer(static_cast<unsigned char*>(p));
}

// gamma_n = n u / (1 - n u): the classic bound on n successive fp32 roundings.
double gamma(double n) { return n * kUnit / (1.0 - n * kUnit); }

// Smallest float >= v.
float round_up_to_float(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, INFINITY);
  return f;
}

// ---- the engine ----------------------------------------------------------------------------------

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

  void allocate(int64_t rows, bool int8) {
    stats.resize(rows);
    scale.resize(rows);
    sqn.resize(rows);
    if (int8) {
      qstep.assign(round_up(rows, kBlock) + kBlock, 0.f);
      qscale.assign(rows, 0.f);
      qoffset.assign(round_up(rows, kBlock) + kBlock, 0);
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
  RowArrays x, y;                            // y unused in the self-join (see side_y)
  const KernelSet* ks = nullptr;             // tile kernels chosen for this layer
  int64_t dpad = 0;                          // feature dimension padded for ks
  std::vector<float> windows;                // [n] 2 x bound on row i's tile key errors
};

// Per-thread scratch: packed panels, the score tile and the merge buffers.
struct Worker {
  // Packed blocks kept across tiles: vector side for blocks I = kVectorBlocks * q + s in slot
  // s, broadcast side for one block J. Tiles run J-outer over a group of kVectorBlocks I
  // blocks, so each broadcast block is packed once per group instead of once per tile.
  AlignedBuffer vector_panel[kVectorBlocks];
  AlignedBuffer broadcast_panel;
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

// Schedule: with W tile workers, the first L - (L mod W) layers are "solo" layers, handed out
// dynamically one whole layer per worker (statistics, tiles, merge; no barrier, and a single
// candidate list per row sees the whole stream, so thresholds rise fastest). The remaining
// layers are "shared": all workers split their tiles and each keeps private lists for all rows,
// merged after a barrier. Memory: W x n candidate lists either way.
class Engine {
 public:
  Engine(const KnnProblem& p, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel)
      : p_(p), indices_(indices), scores_(scores), cancel_(cancel) {
    choice_ = choose_kernels(p.metric, p.d);
    self_ = p.y == nullptr;
    x_ = p.x;
    y_ = self_ ? p.x : p.y;
    n_ = p.n;
    m_ = self_ ? p.n : p.m;
    d_ = p.d;
    exclude_ = self_ && p.exclude_self;
    workers_ = num_threads > 0 ? num_threads : default_num_threads();
    capacity_ = static_cast<int>(std::min<int64_t>(2 * int64_t(p.k) + 64, m_));
    // Candidate lists cost (tile workers) x n x capacity entries; keep them under
    // max(16 MiB, 5% of the input) with fewer tile workers if need be; only if one worker's
    // lists do not fit (huge k) scan every row exactly instead.
    const int64_t input_bytes = 4 * p.L * (n_ + (self_ ? 0 : m_)) * d_;
    const int64_t limit = std::max<int64_t>(int64_t(16) << 20, input_bytes / 20);
    const int64_t per_list_set = n_ * (int64_t(capacity_) * 8 + int64_t(p.k) * 4 + 13);
    tile_workers_ = workers_;
    while (tile_workers_ > 1 && tile_workers_ * per_list_set > limit) --tile_workers_;
    direct_ = per_list_set > limit;
  }

  void run() {
    const int64_t slots = direct_ ? 1 : tile_workers_;
    slots_.resize(slots);
    for (auto& slot : slots_) {
      slot.x.allocate(n_, choice_.int8 != nullptr);
      if (!self_) slot.y.allocate(m_, choice_.int8 != nullptr);
    }
    workers_state_.resize(workers_);
    const int64_t panel_bytes = round_up(d_, 2) * 4;  // per packed row, either precision
    for (int wid = 0; wid < tile_workers_ && !direct_; ++wid) {
      Worker& w = workers_state_[wid];
      for (auto& panel : w.vector_panel) panel = aligned_buffer(kBlock * panel_bytes);
      w.broadcast_panel = aligned_buffer(kBlock * panel_bytes);
      w.tile.assign(kBlock * kTileStride, 0.f);
    }
    if (!direct_) {
      lists_.reserve(tile_workers_);
      for (int w = 0; w < tile_workers_; ++w) lists_.emplace_back(n_, capacity_, p_.k);
    }
    const int64_t solo = (direct_ || tile_workers_ < 2) ? 0 : p_.L - p_.L % tile_workers_;
    parallel_for(solo, tile_workers_, cancel_, [&](int64_t l, int wid) { run_solo(l, wid); });
    for (int64_t l = solo; l < p_.L && !cancel_.load(); ++l) run_shared(l);
  }

 private:
  // ---- the two schedules ---------------------------------------------------------------------

  void run_solo(int64_t l, int wid) {
    if (bad_input_.load()) return;
    LayerSlot& slot = slots_[wid];
    Worker& w = workers_state_[wid];
    const KernelSet* known = choice_.forced ? choice_.forced : w.trusted;
    for (int64_t r = 0; r < n_ + (self_ ? 0 : m_); ++r) row_stats(slot, l, r, known);
    prepare(slot, l, w.trusted);
    w.rows_done = w.rescored = w.overflows = 0;
    w.forget();
    for (const TileTask& t : tile_order()) {
      if (cancel_.load(std::memory_order_relaxed) || bad_input_.load(std::memory_order_relaxed))
        return;
      run_tile(slot, t.i, t.j, w, lists_[wid]);
    }
    finish_solo_layer(slot, w, wid);
    // Consecutive layers look alike: if low-precision tiles left few candidates here, the
    // worker's next layer uses them without sampling (a layer that goes badly re-enables it).
    const bool went_well = w.rescored <= w.rows_done * list_budget() &&
                           w.overflows * 200 <= w.rows_done;
    w.trusted = slot.ks->precision != kFp32 && went_well ? slot.ks : nullptr;
  }

  void run_shared(int64_t l) {
    LayerSlot& slot = slots_[0];
    const int64_t rows = n_ + (self_ ? 0 : m_);
    parallel_for((rows + kStatsChunk - 1) / kStatsChunk, workers_, cancel_, [&](int64_t t, int) {
      for (int64_t r = t * kStatsChunk; r < std::min(rows, (t + 1) * kStatsChunk); ++r)
        row_stats(slot, l, r, choice_.forced);
    });
    if (cancel_.load()) return;
    prepare(slot, l, nullptr);
    if (!direct_) {
      const std::vector<TileTask> tasks = tile_order();
      for (auto& w : workers_state_) w.forget();
      parallel_for(static_cast<int64_t>(tasks.size()), tile_workers_, cancel_,
                   [&](int64_t t, int wid) {
                     run_tile(slot, tasks[t].i, tasks[t].j, workers_state_[wid], lists_[wid]);
                   });
      if (cancel_.load()) return;
    }
    const int nlists = static_cast<int>(lists_.size());
    parallel_for((n_ + kMergeChunk - 1) / kMergeChunk, workers_, cancel_,
                 [&](int64_t t, int wid) {
                   for (int64_t i = t * kMergeChunk; i < std::min(n_, (t + 1) * kMergeChunk); ++i)
                     finish_row(slot, i, workers_state_[wid], 0, nlists);
                 });
  }

  static int64_t blocks(int64_t rows) { return (rows + kBlock - 1) / kBlock; }

  struct TileTask {
    int32_t i, j;  // vector-side block of x, broadcast-side block of y
  };

  // Every tile once (self-join: only i <= j), grouped kVectorBlocks i-blocks at a time with j
  // outermost inside a group, so consecutive tiles share their packed blocks.
  std::vector<TileTask> tile_order() const {
    std::vector<TileTask> tasks;
    const int64_t bx = blocks(n_), by = blocks(m_);
    for (int64_t b0 = 0; b0 < bx; b0 += kVectorBlocks) {
      const int64_t b1 = std::min<int64_t>(bx, b0 + kVectorBlocks);
      for (int64_t bj = self_ ? b0 : 0; bj < by; ++bj)
        for (int64_t bi = b0; bi < b1; ++bi)
          if (!self_ || bi <= bj) tasks.push_back({int32_t(bi), int32_t(bj)});
    }
    return tasks;
  }

  // ---- phase 0: statistics and the choice of tile precision -----------------------------------

  // Row r of layer l: x rows first (r < n), then y rows (cross form). With the layer's tiles
  // already known (forced or trusted), only their packing statistics are needed.
  void row_stats(LayerSlot& slot, int64_t l, int64_t r, const KernelSet* known) {
    const bool x_row = r < n_;
    const int64_t i = x_row ? r : r - n_;
    const float* row = x_row ? x_ + (l * n_ + i) * d_ : y_ + (l * m_ + i) * d_;
    RowArrays& side = x_row ? slot.x : slot.y;
    RowStats& stats = side.stats[i];
    choice_.fp32->row_stats(row, d_, p_.metric == Metric::Cosine, &stats);
    for (const KernelSet* low : {choice_.bf16, choice_.int8})
      if (low && (!known || known == low)) low->packing_stats(row, d_, &stats);
    // The statistics pass is where the engine first reads each row, so it validates here: a
    // NaN/Inf row has a non-finite norm, and cosine needs a norm that survives float32.
    const bool cosine = p_.metric == Metric::Cosine;
    if (!std::isfinite(stats.norm) || (cosine && !(stats.sq_norm >= 1e-30f))) {
      bad_input_ = true;
      const std::string where = "layer " + std::to_string(l) + ", row " + std::to_string(i);
      throw std::invalid_argument(
          std::string(x_row ? "x" : "y") +
          (std::isfinite(stats.norm) ? " has a zero or near-zero-norm row (norm < 1e-15), which "
                                       "has no cosine similarity in float32: " + where
                                     : " contains NaN or Inf: " + where));
    }
    side.store(i, stats, choice_.int8 && (!known || known == choice_.int8));
  }

  // Picks the layer's tile kernels and its key error window: fp32 for exact scans, else the
  // forced precision, else the worker's trusted tiles, else the cheapest by cheapest_tiles.
  void prepare(LayerSlot& slot, int64_t l, const KernelSet* trusted) {
    slot.layer = l;
    // Python rescales such a layer by a power of two and retries (see safe_range.h).
    const std::string unsafe = safe_range_error(p_.metric, slot.x.stats, side_y(slot).stats, l);
    if (!unsafe.empty()) {
      bad_input_ = true;
      throw std::overflow_error(unsafe);
    }
    if (direct_) {
      slot.ks = choice_.fp32;
    } else if (choice_.forced) {
      slot.ks = choice_.forced;
    } else {
      slot.ks = trusted ? trusted : cheapest_tiles(slot);
    }
    slot.dpad = round_up(d_, slot.ks->group);
    slot.windows = key_windows(slot, *slot.ks);
  }

  // The database side: the query rows themselves in the self-join.
  const RowArrays& side_y(const LayerSlot& s) const { return self_ ? s.x : s.y; }
  // What packing multiplies a side's rows by: the cosine scale, or for int8 the quant_scale.
  static const float* pack_scale(const LayerSlot& s, const RowArrays& side) {
    return s.ks->precision == kInt8 ? side.qscale.data() : side.scale.data();
  }
  const float* layer_x(const LayerSlot& s) const { return x_ + s.layer * n_ * d_; }
  const float* layer_y(const LayerSlot& s) const { return y_ + s.layer * m_ * d_; }

  // Mean candidates per row that a precision may leave and still be worth its tiles: half-way
  // from k to the list capacity (full lists overflow into slow exact scans).
  double list_budget() const { return p_.k + 0.5 * (capacity_ - p_.k); }

  // Low-precision tiles halve (bf16) or quarter (int8) the GEMM time but widen the candidate
  // window (roughly 2^-7 |x||y| for bf16, 2^-5 for int8 on well-spread rows); on anisotropic
  // layers (all cosines near 1) or rows with outlying features, so many candidates fall inside
  // it that re-scoring or overflowing lists cost more than the GEMM saves. Estimate per row:
  // GEMM work (database rows per pass over the speed-up) + kRescoreCost per exactly re-scored
  // candidate, both in fp32 multiply-adds per feature, with each precision's candidate count
  // sampled; the cheapest precision within list_budget wins.
  const KernelSet* cheapest_tiles(const LayerSlot& slot) const {
    constexpr double kRescoreCost = 4;  // a gathered exact score vs one fp32 GEMM row (estimate)
    std::vector<const KernelSet*> low;
    for (const KernelSet* ks : {choice_.int8, choice_.bf16})
      if (ks) low.push_back(ks);
    if (low.empty()) return choice_.fp32;
    std::vector<std::vector<float>> windows;
    for (const KernelSet* ks : low) windows.push_back(key_windows(slot, *ks));
    const std::vector<double> candidates = sampled_candidates(slot, windows);
    const double pass_rows = self_ ? 0.5 * double(m_) : double(m_);
    auto cost = [&](const KernelSet& ks, double count) {
      return pass_rows / double(1 << ks.precision) + kRescoreCost * count;
    };
    const KernelSet* best = choice_.fp32;
    double best_cost = cost(*choice_.fp32, p_.k);
    for (size_t i = 0; i < low.size(); ++i) {
      if (candidates[i] <= list_budget() && cost(*low[i], candidates[i]) < best_cost) {
        best = low[i];
        best_cost = cost(*low[i], candidates[i]);
      }
    }
    return best;
  }

  // For each set of per-row windows, the mean over a few sampled rows of how many database rows
  // score within the row's window of its k-th best (exact scores, one streaming pass).
  std::vector<double> sampled_candidates(const LayerSlot& slot,
                                         const std::vector<std::vector<float>>& windows) const {
    constexpr int kSamples = 8;
    const float* xl = layer_x(slot);
    const float* yl = layer_y(slot);
    const float* sy = side_y(slot).scale.data();
    const int samples = static_cast<int>(std::min<int64_t>(kSamples, n_));
    std::vector<const float*> rows(samples);
    std::vector<float> scales(samples), keys(size_t(samples) * m_), out(samples);
    std::vector<int64_t> which(samples);
    for (int s = 0; s < samples; ++s) {
      which[s] = (2 * s + 1) * n_ / (2 * samples);
      rows[s] = xl + which[s] * d_;
      scales[s] = slot.x.scale[which[s]];
    }
    for (int64_t j = 0; j < m_; ++j) {  // the database row stays in cache for all samples
      if (p_.metric == Metric::SquaredL2) {
        choice_.fp32->sqdist_batch(yl + j * d_, rows.data(), samples, d_, out.data());
      } else {
        choice_.fp32->dot_batch(yl + j * d_, sy[j], rows.data(), scales.data(), samples, d_,
                                out.data());
      }
      for (int s = 0; s < samples; ++s) {
        const bool self = exclude_ && j == which[s];
        keys[s * m_ + j] = self ? -INFINITY : rank_key(out[s], p_.metric);
      }
    }
    std::vector<double> totals(windows.size(), 0.);
    for (int s = 0; s < samples; ++s) {
      float* row = keys.data() + s * m_;
      std::nth_element(row, row + (p_.k - 1), row + m_, std::greater<float>());
      for (size_t w = 0; w < windows.size(); ++w) {
        const float threshold = lower_difference(row[p_.k - 1], windows[w][which[s]]);
        totals[w] += static_cast<double>(
            std::count_if(row, row + m_, [&](float v) { return v >= threshold; }));
      }
    }
    for (double& total : totals) total /= samples;
    return totals;
  }

  // For each query row i, twice a bound B_i on |approximate tile key - exact key| over the
  // pairs (i, j). With it, row i's list, which keeps every candidate whose approximate key is
  // >= (k-th best approximate key) - 2 B_i, provably holds the exact top k: each of the k best
  // approximate candidates has an exact key >= kth - B_i, so every exact top-k member has exact
  // key >= kth - B_i and approximate key >= kth - 2 B_i. Notation (u = 2^-24,
  // gamma_n = n u / (1 - n u); x is row i, y any database row, bounded by the layer's maxima):
  // a = |x * scale| (the fp32 operand), p = |packed operand|, e = |packed - fp32 operand|.
  //  * fp32 tile: each lane sums dpad exact-or-rounded products in order, so
  //    |tile - <x, y>| <= gamma_{dpad+2} sum |x_t y_t| <= gamma_{dpad+2} a_x a_y (Cauchy-Schwarz).
  //  * bf16 tile: <x~, y~> - <x, y> = <x~ - x, y> + <x~, y~ - y>, bounded by e_x a_y + p_x e_y;
  //    the bf16 products are exact in fp32 and VDPBF16PS rounds at most twice per pair of
  //    features, so accumulation adds gamma_{dpad+2} p_x p_y; flushed denormals add < 1e-30.
  //  * int8 tile: the same e_x a_y + p_x e_y for x~ = step * codes; the code products sum
  //    exactly in int32, then one conversion and two scalings add gamma_3 p_x p_y.
  //  * exact score: 16 fused lanes + a halving tree round at most d + 2 times on non-negative
  //    magnitudes: |exact - <x, y>| <= gamma_{d+2} a_x a_y; for squared L2 the rounded
  //    differences add one more rounding: <= gamma_{d+3} (a_x + a_y)^2.
  //  * squared-L2 keys 2 tile - (|x|^2 + |y|^2) add fp32-rounded norms and two roundings:
  //    <= 4 u (2 a_x a_y + a_x^2 + a_y^2), with the tile error counted twice.
  // The bound is taken per query row i (a_x, p_x, e_x of row i itself, maxima over the
  // database rows for the y side): row i's list only ever holds pairs (i, j).
  std::vector<float> key_windows(const LayerSlot& slot, const KernelSet& ks) const {
    const Precision precision = ks.precision;
    const std::vector<RowStats>& database = side_y(slot).stats;
    double ay = 0, py = 0, ey = 0;
    for (const RowStats& r : database) {
      ay = std::max(ay, r.norm);
      py = std::max(py, r.packed[precision].norm);
      ey = std::max(ey, r.packed[precision].error);
    }
    const double dp = static_cast<double>(round_up(d_, ks.group));
    const double accumulation = precision == kInt8 ? gamma(3) : gamma(dp + 2);
    const double exact_roundings = gamma(static_cast<double>(d_) + 2);
    const double l2_roundings = gamma(static_cast<double>(d_) + 3);
    std::vector<float> windows(n_);
    for (int64_t i = 0; i < n_; ++i) {
      const RowStats& row = slot.x.stats[i];
      const double ax = row.norm, px = row.packed[precision].norm;
      const double ex = row.packed[precision].error;
      const double product = precision == kFp32
                                 ? accumulation * ax * ay
                                 : ex * ay + px * ey + accumulation * px * py + 1e-30;
      double error;
      if (p_.metric == Metric::SquaredL2) {
        error = 2 * product + 4 * kUnit * (2 * ax * ay + ax * ax + ay * ay) +
                l2_roundings * (ax + ay) * (ax + ay);
      } else {
        error = product + exact_roundings * ax * ay;
      }
      windows[i] = round_up_to_float(2 * error * (1 + 1e-6) + 1e-30);
    }
    return windows;
  }

  // ---- phase 1: one tile, feeding both of its row blocks ---------------------------------------

  void run_tile(const LayerSlot& slot, int64_t bi, int64_t bj, Worker& w, CandidateLists& lists) {
    const KernelSet* ks = slot.ks;
    const int64_t i0 = bi * kBlock, ni = std::min(kBlock, n_ - i0);
    const int64_t j0 = bj * kBlock, nj = std::min(kBlock, m_ - j0);
    const int s = static_cast<int>(bi % kVectorBlocks);
    const int64_t vector_key = slot.layer * blocks(n_) + bi;
    if (w.vector_key[s] != vector_key) {
      ks->pack_vector_side(layer_x(slot) + i0 * d_, ni, d_, pack_scale(slot, slot.x) + i0, slot.dpad,
                           w.vector_panel[s].get());
      w.vector_key[s] = vector_key;
    }
    const int64_t broadcast_key = slot.layer * blocks(m_) + bj;
    if (w.broadcast_key != broadcast_key) {
      ks->pack_broadcast_side(layer_y(slot) + j0 * d_, nj, d_, pack_scale(slot, side_y(slot)) + j0, slot.dpad,
                              w.broadcast_panel.get());
      w.broadcast_key = broadcast_key;
    }
    const bool diagonal = self_ && bi == bj;
    const bool int8 = ks->precision == kInt8;
    auto scales_from = [&](int64_t column) {  // int8 dequantisation from tile column `column`
      return TileScales{int8 ? side_y(slot).qstep.data() + j0 : nullptr,
                        int8 ? slot.x.qstep.data() + i0 + column : nullptr,
                        int8 ? slot.x.qoffset.data() + i0 + column : nullptr};
    };
    if (!diagonal) {
      const TileScales scales = scales_from(0);
      ks->gemm(w.broadcast_panel.get(), round_up(nj, ks->mr), w.vector_panel[s].get(),
               round_up(ni, ks->nr), slot.dpad, w.tile.data(), kTileStride, &scales);
    } else {
      // A diagonal tile is symmetric: compute each nr-column panel only down to its last
      // column's row (the upper triangle, in whole micro-tiles) and scan it upper_only.
      const auto* vector = static_cast<const unsigned char*>(w.vector_panel[s].get());
      for (int64_t c0 = 0; c0 < ni; c0 += ks->nr) {
        const int64_t rows = std::min(nj, c0 + ks->nr);
        const TileScales scales = scales_from(c0);
        ks->gemm(w.broadcast_panel.get(), round_up(rows, ks->mr),
                 vector + c0 * slot.dpad * ks->elem_bytes, ks->nr, slot.dpad, w.tile.data() + c0,
                 kTileStride, &scales);
      }
    }
    const bool l2 = p_.metric == Metric::SquaredL2;
    ScanTarget target;
    target.lists = &lists;
    target.windows = slot.windows.data();
    target.col_list = i0;
    target.row_list = self_ ? j0 : -1;
    target.col_id = int32_t(i0);
    target.row_id = int32_t(j0);
    target.l2_row = l2 ? side_y(slot).sqn.data() + j0 : nullptr;
    target.l2_col = l2 ? slot.x.sqn.data() + i0 : nullptr;
    target.skip_diagonal = diagonal && exclude_;
    target.upper_only = diagonal;
    ks->scan_tile(w.tile.data(), kTileStride, int(nj), int(ni), target);
  }

  // ---- phase 2: per row, union the candidate lists [first, last), keep those within the window
  // of the k-th best approximate key, re-score them exactly, write the k best in order ----------

  void finish_row(const LayerSlot& slot, int64_t i, Worker& w, int first, int last) {
    const bool exact_scan = collect_candidates(slot, i, w, first, last);
    score_exactly(slot, i, w);
    write_row(slot, i, w, exact_scan);
  }

  // w.ids = row i's candidates that survive the final threshold, or every database row when
  // the row must be scanned exactly (returns true then); empties the row's lists.
  bool collect_candidates(const LayerSlot& slot, int64_t i, Worker& w, int first, int last) {
    const int k = p_.k;
    bool exact_scan = direct_;
    w.keys.clear();
    w.ids.clear();
    const float solo_threshold = direct_ ? 0.f : lists_[first].thresholds()[i];
    for (int li = first; li < last && !direct_; ++li) {
      CandidateLists& lists = lists_[li];
      if (lists.overflowed(i)) exact_scan = true;
      const int c = lists.count(i);
      for (const Candidate* e = lists.entries(i); e != lists.entries(i) + c; ++e) {
        w.keys.push_back(e->key);
        w.ids.push_back(e->id);
      }
      lists.reset(i);
    }
    if (static_cast<int64_t>(w.keys.size()) < k) exact_scan = true;
    if (exact_scan) {
      collect_all(i, w);
    } else {
      // One list saw every candidate and tracked the exact k-th best key: its threshold is
      // already (k-th best) - window. Several lists: find the k-th best of their union.
      float threshold = solo_threshold;
      if (last - first > 1) {
        w.sorted_keys = w.keys;
        std::nth_element(w.sorted_keys.begin(), w.sorted_keys.begin() + (k - 1),
                         w.sorted_keys.end(), std::greater<float>());
        threshold = lower_difference(w.sorted_keys[k - 1], slot.windows[i]);
      }
      size_t kept = 0;
      for (size_t c = 0; c < w.keys.size(); ++c)
        if (w.keys[c] >= threshold) w.ids[kept++] = w.ids[c];
      w.ids.resize(kept);
    }
    return exact_scan;
  }

  // Counts the row in w's statistics and writes the k best of w.ranked (exact keys) in order.
  void write_row(const LayerSlot& slot, int64_t i, Worker& w, bool exact_scan) {
    const int k = p_.k;
    w.rows_done += 1;
    w.rescored += static_cast<int64_t>(w.ranked.size());
    w.overflows += exact_scan && !direct_;
    const int64_t count = static_cast<int64_t>(w.ranked.size());
    int32_t* out_i = indices_ + (slot.layer * n_ + i) * k;
    float* out_s = scores_ + (slot.layer * n_ + i) * k;
    if (count <= kPlaceLimit) {
      w.place_keys.resize(count + k);
      w.place_ids.resize(count);
      for (int64_t c = 0; c < count; ++c) {
        w.place_keys[c] = w.ranked[c].first;
        w.place_ids[c] = w.ranked[c].second;
      }
      float* best_keys = w.place_keys.data() + count;
      place_best(w.place_keys.data(), w.place_ids.data(), int(count), k, best_keys, out_i);
      for (int c = 0; c < k; ++c) out_s[c] = rank_key(best_keys[c], p_.metric);
      return;
    }
    auto before = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
      return ranks_before(a.first, a.second, b.first, b.second);
    };
    std::nth_element(w.ranked.begin(), w.ranked.begin() + (k - 1), w.ranked.end(), before);
    std::sort(w.ranked.begin(), w.ranked.begin() + k, before);
    for (int c = 0; c < k; ++c) {
      out_i[c] = w.ranked[c].second;
      out_s[c] = rank_key(w.ranked[c].first, p_.metric);
    }
  }

  // A solo layer's phase 2. All candidate lists are final here, so first gather every row's
  // surviving candidates (CSR), then score rows in order. The exact score is symmetric to the
  // bit in the self-join (the same two fp32 operands per feature, commuted products, the same
  // lanes and tree; (a-b)^2 = (b-a)^2), and ~70% of candidate pairs are mutual: when j < i
  // already scored i, row i reuses that key instead of fetching row j (a cache miss) again.
  void finish_solo_layer(const LayerSlot& slot, Worker& w, int wid) {
    const bool reuse = self_;
    w.pair_start.assign(n_ + 1, 0);
    w.pair_ids.clear();
    w.scanned.assign(n_, 0);
    for (int64_t i = 0; i < n_; ++i) {
      if ((i & 63) == 0 && cancel_.load(std::memory_order_relaxed)) return;
      w.scanned[i] = collect_candidates(slot, i, w, wid, wid + 1);
      if (!w.scanned[i]) w.pair_ids.insert(w.pair_ids.end(), w.ids.begin(), w.ids.end());
      w.pair_start[i + 1] = static_cast<int64_t>(w.pair_ids.size());
    }
    w.pair_keys.assign(w.pair_ids.size(), 0.f);
    for (int64_t i = 0; i < n_; ++i) {
      if ((i & 63) == 0 && cancel_.load(std::memory_order_relaxed)) return;
      if (w.scanned[i]) {
        collect_all(i, w);
        score_exactly(slot, i, w);
        write_row(slot, i, w, true);
        continue;
      }
      w.ranked.clear();
      w.ids.clear();
      w.slots.clear();
      for (int64_t q = w.pair_start[i]; q < w.pair_start[i + 1]; ++q) {
        const int32_t j = w.pair_ids[q];
        int64_t found = -1;
        if (reuse && j < i && !w.scanned[j]) {
          for (int64_t e = w.pair_start[j]; e < w.pair_start[j + 1]; ++e)
            if (w.pair_ids[e] == i) {
              found = e;
              break;
            }
        }
        if (found >= 0) {
          w.pair_keys[q] = w.pair_keys[found];
          w.ranked.emplace_back(w.pair_keys[q], j);
        } else {
          w.ids.push_back(j);
          w.slots.push_back(q);
        }
      }
      const size_t reused = w.ranked.size();
      score_exactly(slot, i, w, true);
      for (size_t c = 0; c < w.slots.size(); ++c) w.pair_keys[w.slots[c]] = w.ranked[reused + c].first;
      write_row(slot, i, w, false);
    }
  }

  // w.ids = every database row but the excluded self.
  void collect_all(int64_t i, Worker& w) const {
    w.ids.clear();
    for (int64_t j = 0; j < m_; ++j)
      if (!(exclude_ && j == i)) w.ids.push_back(int32_t(j));
  }

  // w.ranked = (exact key, id) for every id in w.ids (appended when keep is set).
  void score_exactly(const LayerSlot& slot, int64_t i, Worker& w, bool keep = false) const {
    const float* xrow = layer_x(slot) + i * d_;
    const float* yl = layer_y(slot);
    const float* sy = side_y(slot).scale.data();
    const float sx = slot.x.scale[i];
    constexpr int kBatch = 64;
    if (!keep) w.ranked.clear();
    w.rows.resize(kBatch);
    w.row_scales.resize(kBatch);
    w.exact.resize(kBatch);
    for (size_t first = 0; first < w.ids.size(); first += kBatch) {
      const int count = static_cast<int>(std::min<size_t>(kBatch, w.ids.size() - first));
      for (int q = 0; q < count; ++q) {
        const int32_t j = w.ids[first + q];
        w.rows[q] = yl + j * d_;
        w.row_scales[q] = sy[j];
      }
      if (p_.metric == Metric::SquaredL2) {
        choice_.fp32->sqdist_batch(xrow, w.rows.data(), count, d_, w.exact.data());
      } else {
        choice_.fp32->dot_batch(xrow, sx, w.rows.data(), w.row_scales.data(), count, d_,
                                w.exact.data());
      }
      for (int q = 0; q < count; ++q)
        w.ranked.emplace_back(rank_key(w.exact[q], p_.metric), w.ids[first + q]);
    }
  }

  const KnnProblem& p_;
  int32_t* indices_;
  float* scores_;
  const std::atomic<bool>& cancel_;
  std::atomic<bool> bad_input_{false};  // a row failed validation: stop, the error propagates
  KernelChoice choice_;
  bool self_ = true, exclude_ = true, direct_ = false;
  const float* x_ = nullptr;
  const float* y_ = nullptr;
  int64_t n_ = 0, m_ = 0, d_ = 0;
  int workers_ = 1, tile_workers_ = 1, capacity_ = 1;
  std::vector<LayerSlot> slots_;
  std::vector<Worker> workers_state_;
  std::vector<CandidateLists> lists_;
};

}  // namespace

const char* simd_level() {
  switch (cpu_level()) {
    case Level::Avx512:
      return cpu_has_bf16() ? "avx512-bf16" : "avx512";
    case Level::Avx2:
      return "avx2";
    default:
      return "scalar";
  }
}

std::vector<std::string> tile_precisions() {
  std::vector<std::string> out = {"fp32"};
  if (cpu_has_bf16() && avx512_bf16_kernels()) out.push_back("bf16");
  if (cpu_has_vnni() && avx512_int8_kernels()) out.push_back("int8");
  return out;
}

void knn(const KnnProblem& problem, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel) {
  if (problem.L <= 0 || problem.n <= 0 || problem.k <= 0) return;
  Engine engine(problem, indices, scores, num_threads, cancel);
  engine.run();
}

}  // namespace layerknn::cpu
