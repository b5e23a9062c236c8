// The CPU k-NN engine's scheduler (see knn_cpu.h): exact top-k per row from blocked GEMM tiles
// fused with per-row candidate selection; no n x n score matrix and no full copy of the input
// ever exists. Self-join symmetry: a layer's rows are cut into 192-row blocks and only tiles
// (I, J) with I <= J are computed (diagonal tiles only down to their upper triangle); each tile
// feeds the rows of I (column scan) and the rows of J (row scan).
// Races are avoided by ownership: a "solo" layer belongs to one worker from start to finish,
// and in a "shared" layer every worker fills private candidate lists merged after a barrier.
// Tile scores are approximate (fp32 in GEMM order, bf16 products, or exact sums of int8 codes of
// per-row quantised rows; all of them centred and outlier-split for ip/cosine layers
// with a large mean or massive features, tile_split.h; AVX-512 or AMX tiles, simd_amx.cpp;
// cost_model.h picks per layer by measured speeds, tile_rate.h): lists keep every candidate in a
// rigorous error window of the k-th best key (tile_windows.h), and the merge (row_merge.h)
// re-scores them exactly before the final ordered selection, so results never depend on the
// kernel, the precision or the thread count.
#include "cpu/knn_cpu.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/cost_model.h"
#include "cpu/engine_options.h"
#include "cpu/engine_state.h"
#include "cpu/knn_kernels.h"
#include "cpu/parallel.h"
#include "cpu/row_merge.h"
#include "cpu/safe_range.h"
#include "cpu/tile_rate.h"
#include "cpu/tile_windows.h"
#include "cpu/topk_candidates.h"

namespace layerknn::cpu {
namespace {

std::mutex reports_mutex;
std::vector<LayerReport> reports_published;  // guarded by reports_mutex

constexpr int64_t kTileStride = 192;  // floats per tile line (multiple of 16 and of every nr)
constexpr int64_t kStatsChunk = 64;   // rows per statistics task
constexpr int64_t kMergeChunk = 32;   // rows per merge task

// Schedule: with W tile workers, the first L - (L mod W) layers are "solo" layers, handed out
// dynamically one whole layer per worker (statistics, tiles, merge; no barrier, and a single
// candidate list per row sees the whole stream, so thresholds rise fastest). The remaining
// layers are "shared": all workers split their tiles and each keeps private lists for all rows,
// merged after a barrier. Memory: W x n candidate lists either way.
class Engine {
 public:
  Engine(const KnnProblem& p, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel, std::atomic<int64_t>* layers_done)
      : p_(p), cancel_(cancel), layers_done_(layers_done) {
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
    RowMerge::Setup merge;
    merge.x = x_;
    merge.y = y_;
    merge.n = n_;
    merge.m = m_;
    merge.d = d_;
    merge.k = p.k;
    merge.metric = p.metric;
    merge.self = self_;
    merge.exclude = exclude_;
    merge.direct = direct_;
    merge.exact = choice_.fp32;
    merge.lists = &lists_;
    merge.indices = indices;
    merge.scores = scores;
    merge.cancel = &cancel_;
    merge_ = std::make_unique<RowMerge>(merge);
    reports_.assign(p.L, LayerReport{});
  }

  void run() {
    const int64_t slots = direct_ ? 1 : tile_workers_;
    slots_.resize(slots);
    for (auto& slot : slots_) {
      slot.x.allocate(n_, choice_.int8 != nullptr, choice_.split);
      if (!self_) slot.y.allocate(m_, choice_.int8 != nullptr, choice_.split);
    }
    workers_state_.resize(workers_);
    // per packed row, any precision: fp32 rows, or bf16/int8 rows padded to a 64-byte AMX tile row
    const int64_t panel_bytes = std::max(round_up(d_, 2) * 4, round_up(d_, 64) * 2);
    for (int wid = 0; wid < tile_workers_ && !direct_; ++wid) {
      Worker& w = workers_state_[wid];
      for (auto& panel : w.vector_panel) panel = aligned_buffer(kBlock * panel_bytes);
      w.broadcast_panel = aligned_buffer(kBlock * panel_bytes);
      if (choice_.split) w.centred = aligned_buffer(kBlock * d_ * 4);
      w.tile.assign(kBlock * kTileStride, 0.f);
    }
    if (!direct_) {
      lists_.reserve(tile_workers_);
      for (int w = 0; w < tile_workers_; ++w) lists_.emplace_back(n_, capacity_, p_.k);
    }
    const int64_t solo = (direct_ || tile_workers_ < 2) ? 0 : p_.L - p_.L % tile_workers_;
    parallel_for(solo, tile_workers_, cancel_, [&](int64_t l, int wid) { run_solo(l, wid); });
    for (int64_t l = solo; l < p_.L && !cancel_.load(); ++l) run_shared(l);
    if (!cancel_.load()) {
      std::lock_guard<std::mutex> lock(reports_mutex);
      reports_published = reports_;
    }
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
    merge_->finish_solo_layer(slot, w, wid);
    reports_[l] = {slot.ks->name, double(w.rescored) / double(std::max<int64_t>(1, w.rows_done))};
    layer_finished();
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
    for (auto& w : workers_state_) w.rows_done = w.rescored = w.overflows = 0;
    parallel_for((n_ + kMergeChunk - 1) / kMergeChunk, workers_, cancel_,
                 [&](int64_t t, int wid) {
                   for (int64_t i = t * kMergeChunk; i < std::min(n_, (t + 1) * kMergeChunk); ++i)
                     merge_->finish_row(slot, i, workers_state_[wid], 0, nlists);
                 });
    int64_t done = 0, rescored = 0;
    for (const auto& w : workers_state_) done += w.rows_done, rescored += w.rescored;
    reports_[l] = {slot.ks->name, double(rescored) / double(std::max<int64_t>(1, done))};
    layer_finished();
  }

  // Counts a layer whose outputs are complete (a cancelled layer's are not).
  void layer_finished() {
    if (layers_done_ && !cancel_.load(std::memory_order_relaxed)) layers_done_->fetch_add(1);
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
    slot.split.active = false;
    const KernelSet* known = choice_.forced ? choice_.forced : trusted;
    if (!direct_ && choice_.split) split_layer(slot, known);
    if (direct_) {
      slot.ks = choice_.fp32;
    } else if (choice_.forced) {
      slot.ks = choice_.forced;
    } else {
      slot.ks = trusted ? trusted : cheapest_tiles(slot);
    }
    slot.dpad = padded_features(d_, *slot.ks);
    slot.windows = key_windows(slot, *slot.ks);
  }

  // Centres the slot's layer on the database rows' mean, splits off its most outlying features
  // and replaces both sides' packing statistics (fp32, and the known low-precision tiles or all on
  // offer) by those of the centred rest (tile_split.h) -- when the layer has a mean or outlying
  // features worth it (worth_splitting); otherwise the plain statistics of row_stats stay.
  void split_layer(LayerSlot& slot, const KernelSet* known) const {
    choose_split(layer_y(slot), side_y(slot).scale.data(), m_, d_, split_width(d_), &slot.split);
    double peak = 0.;
    for (const RowStats& r : side_y(slot).stats) peak = std::max(peak, r.norm);
    slot.split.active = worth_splitting(slot.split, peak);
    if (!slot.split.active) return;
    std::vector<float> scratch(d_);
    const KernelSet* int8 = !known || known == choice_.int8 ? choice_.int8 : nullptr;
    const KernelSet* bf16 = !known || known == choice_.bf16 ? choice_.bf16 : nullptr;
    split_side_stats(layer_x(slot), n_, 0, n_, d_, slot.split, int8, bf16, *choice_.fp32,
                     &slot.x, scratch.data());
    if (!self_)
      split_side_stats(layer_y(slot), m_, 0, m_, d_, slot.split, int8, bf16, *choice_.fp32,
                       &slot.y, scratch.data());
  }

  // The database side: the query rows themselves in the self-join.
  const RowArrays& side_y(const LayerSlot& s) const { return self_ ? s.x : s.y; }
  // What packing multiplies a side's rows by: the cosine scale, for int8 the quant_scale, and for
  // centred fp32 or bf16 rows (already scaled) nothing (nullptr: 1).
  static const float* pack_scale(const LayerSlot& s, const RowArrays& side) {
    if (s.ks->precision == kInt8) return side.qscale.data();
    return s.split.active ? nullptr : side.scale.data();
  }
  const float* layer_x(const LayerSlot& s) const { return x_ + s.layer * n_ * d_; }
  const float* layer_y(const LayerSlot& s) const { return y_ + s.layer * m_ * d_; }

  // Mean candidates per row that a precision may leave and still be worth its tiles: half-way
  // from k to the list capacity (full lists overflow into slow exact scans).
  double list_budget() const { return p_.k + 0.5 * (capacity_ - p_.k); }

  // The cheapest tiles for the slot's layer (cost_model.h), from sampled candidate counts.
  const KernelSet* cheapest_tiles(const LayerSlot& slot) const {
    std::vector<const KernelSet*> low;
    for (const KernelSet* ks : {choice_.int8, choice_.bf16})
      if (ks) low.push_back(ks);
    if (low.empty()) return choice_.fp32;
    std::vector<std::vector<float>> windows;
    for (const KernelSet* ks : low) windows.push_back(key_windows(slot, *ks));
    const SampleLayer layer{layer_x(slot), layer_y(slot), slot.x.scale.data(),
                            side_y(slot).scale.data(), n_, m_, d_, p_.k, p_.metric, exclude_};
    const std::vector<double> candidates = sampled_candidates(layer, *choice_.fp32, windows);
    std::vector<SampledPrecision> sampled;
    for (size_t i = 0; i < low.size(); ++i) {
      const bool split = slot.split.active;
      const double measured = tile_speedup(*low[i], *choice_.fp32);  // tile_rate.h
      const double speedup =
          split ? split_speedup(measured, double(padded_features(d_, *low[i])), slot.split.m())
                : measured;
      sampled.push_back({low[i]->precision, candidates[i], speedup, split ? kSplitRowCost : 0.});
    }
    const double pass_rows = self_ ? 0.5 * double(m_) : double(m_);
    const Precision best =
        cheapest_precision(pass_rows, p_.k, list_budget(), sampled, rescore_cost(*choice_.fp32));
    for (const KernelSet* ks : low)
      if (ks->precision == best) return ks;
    return choice_.fp32;
  }

  // Each query row's window (tile_windows.h): its own norms for the x side, the layer's maxima
  // over the database rows for the y side (row i's list only ever holds pairs (i, j)).
  std::vector<float> key_windows(const LayerSlot& slot, const KernelSet& ks) const {
    const Precision precision = ks.precision;
    if (slot.split.active)
      return split_key_windows(p_.metric, precision, padded_features(d_, ks), d_, slot.split,
                               slot.x, side_y(slot));
    OperandNorms y;
    for (const RowStats& r : side_y(slot).stats) {
      y.a = std::max(y.a, r.norm);
      y.p = std::max(y.p, r.packed[precision].norm);
      y.e = std::max(y.e, r.packed[precision].error);
    }
    const int64_t dpad = padded_features(d_, ks);
    std::vector<float> windows(n_);
    for (int64_t i = 0; i < n_; ++i) {
      const RowStats& row = slot.x.stats[i];
      const OperandNorms x{row.norm, row.packed[precision].norm, row.packed[precision].error};
      windows[i] = key_window(p_.metric, precision, d_, dpad, x, y);
    }
    return windows;
  }

  // Packs rows [r0, r0 + count) of one side for the slot's tiles: centred and split first when
  // the layer's tiles read split rows.
  void pack(const LayerSlot& slot, bool vector_side, int64_t r0, int64_t count, Worker& w,
            void* panel) const {
    const RowArrays& side = vector_side ? slot.x : side_y(slot);
    const float* rows = (vector_side ? layer_x(slot) : layer_y(slot)) + r0 * d_;
    if (slot.split.active) {
      float* centred = reinterpret_cast<float*>(w.centred.get());
      centre_rows(rows, side.scale.data() + r0, count, slot.split, d_, centred);
      rows = centred;
    }
    auto packer = vector_side ? slot.ks->pack_vector_side : slot.ks->pack_broadcast_side;
    const float* scale = pack_scale(slot, side);
    packer(rows, count, d_, scale ? scale + r0 : nullptr, slot.dpad, panel);
  }

  // ---- phase 1: one tile, feeding both of its row blocks ---------------------------------------

  void run_tile(const LayerSlot& slot, int64_t bi, int64_t bj, Worker& w, CandidateLists& lists) {
    const KernelSet* ks = slot.ks;
    const int64_t i0 = bi * kBlock, ni = std::min(kBlock, n_ - i0);
    const int64_t j0 = bj * kBlock, nj = std::min(kBlock, m_ - j0);
    const int s = static_cast<int>(bi % kVectorBlocks);
    const int64_t vector_key = slot.layer * blocks(n_) + bi;
    if (w.vector_key[s] != vector_key) {
      pack(slot, true, i0, ni, w, w.vector_panel[s].get());
      w.vector_key[s] = vector_key;
    }
    const int64_t broadcast_key = slot.layer * blocks(m_) + bj;
    if (w.broadcast_key != broadcast_key) {
      pack(slot, false, j0, nj, w, w.broadcast_panel.get());
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
    if (slot.split.active) {
      const RowArrays& ys = side_y(slot);
      add_split_terms(w.tile.data(), kTileStride, nj, ni, ys.shift.data() + j0,
                      slot.x.shift.data() + i0, ys.split_v.data() + j0 * slot.split.m(),
                      slot.x.split_vt.data() + i0, n_, slot.split.m());
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

  const KnnProblem& p_;
  const std::atomic<bool>& cancel_;
  std::atomic<int64_t>* layers_done_;
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
  std::unique_ptr<RowMerge> merge_;
  std::vector<LayerReport> reports_;  // [L], each written by the layer's owner
};

}  // namespace

void knn(const KnnProblem& problem, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel, std::atomic<int64_t>* layers_done) {
  if (problem.L <= 0 || problem.n <= 0 || problem.k <= 0) return;
  Engine engine(problem, indices, scores, num_threads, cancel, layers_done);
  engine.run();
}

std::vector<LayerReport> last_layer_reports() {
  std::lock_guard<std::mutex> lock(reports_mutex);
  return reports_published;
}

}  // namespace layerknn::cpu
