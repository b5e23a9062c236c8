// The CPU k-NN engine (see knn_cpu.h): exact top-k per row from blocked GEMM tiles fused with
// per-row candidate selection; no n x n matrix and no full copy of the input ever exists.
// Self-join symmetry: a layer's rows are cut into blocks and only tiles (I, J) with J >= I are
// computed; each tile feeds the rows of I (column scan) and the rows of J (row scan). Every
// worker thread keeps private candidate lists for all rows of the layers in flight, so tiles
// never race; the lists are merged once per layer group. Tile scores are approximate (fp32 in
// GEMM order, or bf16 products): each list keeps every candidate within a rigorous error window
// of its k-th best key, and the merge re-scores those candidates with the exact fp32 score of
// knn_kernels.h before the final ordered selection, so results never depend on the kernel used.
#include "cpu/knn_cpu.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/knn_kernels.h"
#include "cpu/parallel.h"
#include "cpu/topk_candidates.h"

namespace layerknn::cpu {
namespace {

constexpr int64_t kBlock = 192;        // rows per tile side (multiple of every table's mr, nr)
constexpr int64_t kTileStride = 192;   // floats per tile line (multiple of 16 and of every nr)
constexpr int64_t kStatsChunk = 64;    // rows per statistics task
constexpr int64_t kMergeChunk = 32;    // rows per merge task
constexpr double kUnit = 1.0 / 16777216.0;  // fp32 unit roundoff 2^-24

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

std::string env_value(const char* name) {
  const char* v = std::getenv(name);
  std::string s = v ? v : "";
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s.empty() ? "auto" : s;
}

// LAYERKNN_CPU_SIMD=auto|avx512|avx2|scalar caps the instruction set (for testing);
// LAYERKNN_CPU_KERNEL=auto|fp32|bf16 picks the tile precision: auto uses bf16 tiles for cosine
// where AVX512-BF16 exists. Results are identical either way (exact re-scoring).
const KernelSet* choose_kernels(Metric metric) {
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
  if (kernel != "auto" && kernel != "fp32" && kernel != "bf16") {
    throw std::invalid_argument("LAYERKNN_CPU_KERNEL must be auto, fp32 or bf16, got '" + kernel +
                                "'");
  }
  const bool want_bf16 = kernel == "bf16" || (kernel == "auto" && metric == Metric::Cosine);
  if (level == Level::Avx512 && want_bf16 && cpu_has_bf16() && avx512_bf16_kernels()) {
    return avx512_bf16_kernels();
  }
  if (level == Level::Avx512 && avx512_kernels()) return avx512_kernels();
  if (level >= Level::Avx2 && avx2_kernels()) return avx2_kernels();
  return scalar_kernels();
}

// ---- small helpers -----------------------------------------------------------------------------

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

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

struct Worker {
  AlignedBuffer vector_panel;     // packed rows of block I (vector side), cached across tiles
  AlignedBuffer broadcast_panel;  // packed rows of block J (broadcast side)
  std::vector<float> tile;        // [kBlock, kTileStride] scores / keys
  int64_t cached_layer = -1, cached_block = -1;
  // merge scratch
  std::vector<float> keys, sorted_keys, exact;
  std::vector<int32_t> ids;
  std::vector<const float*> rows;
  std::vector<float> row_scales;
  std::vector<std::pair<float, int32_t>> ranked;
};

class Engine {
 public:
  Engine(const KnnProblem& p, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel)
      : p_(p), indices_(indices), scores_(scores), cancel_(cancel) {
    ks_ = choose_kernels(p.metric);
    self_ = p.y == nullptr;
    x_ = p.x;
    y_ = self_ ? p.x : p.y;
    n_ = p.n;
    m_ = self_ ? p.n : p.m;
    d_ = p.d;
    exclude_ = self_ && p.exclude_self;
    dpad_ = round_up(d_, ks_->group);
    workers_ = num_threads > 0 ? num_threads : default_num_threads();
    capacity_ = static_cast<int>(std::min<int64_t>(2 * int64_t(p.k) + 64, m_));
    // Candidate lists cost workers x layers-in-flight x n x capacity entries; keep them under
    // max(16 MiB, 5% of the input), else fall back to exact per-row scans (only for huge k).
    const int64_t input_bytes = 4 * p.L * (n_ + (self_ ? 0 : m_)) * d_;
    const int64_t limit = std::max<int64_t>(int64_t(16) << 20, input_bytes / 20);
    const int64_t per_layer = int64_t(workers_) * n_ * (int64_t(capacity_) * 8 + 9);
    group_ = std::max<int64_t>(1, std::min<int64_t>(p.L, workers_));
    while (group_ > 1 && group_ * per_layer > limit) --group_;
    direct_ = per_layer > limit;
  }

  void run() {
    const int64_t gn = group_ * n_, gm = group_ * (self_ ? 0 : m_);
    stats_x_.resize(gn);
    stats_y_.resize(gm);
    scale_x_.resize(gn);
    scale_y_.resize(gm);
    sqn_x_.resize(gn);
    sqn_y_.resize(gm);
    window_.resize(group_);
    workers_state_.resize(workers_);
    for (auto& w : workers_state_) {
      if (!direct_) {
        w.vector_panel = aligned_buffer(round_up(kBlock, ks_->nr) * dpad_ * ks_->elem_bytes);
        w.broadcast_panel = aligned_buffer(round_up(kBlock, ks_->mr) * dpad_ * ks_->elem_bytes);
        w.tile.assign(kBlock * kTileStride, 0.f);
      }
    }
    if (!direct_) {
      lists_.reserve(workers_);
      for (int w = 0; w < workers_; ++w) lists_.emplace_back(gn, capacity_, p_.k);
    }
    for (int64_t l0 = 0; l0 < p_.L; l0 += group_) {
      const int64_t layers = std::min(group_, p_.L - l0);
      compute_stats(l0, layers);
      if (cancel_.load()) return;
      if (!direct_) {
        compute_tiles(l0, layers);
        if (cancel_.load()) return;
      }
      merge(l0, layers);
      if (std::getenv("LKDBG")) for (auto& li : lists_) fprintf(stderr, "calls %ld passed %ld heaped %ld\n", li.calls, li.passed, li.heaped);
      if (cancel_.load()) return;
    }
  }

 private:
  // Phase 0: per-row scale, norms and packing error; per-layer key error window.
  void compute_stats(int64_t l0, int64_t layers) {
    const bool normalise = p_.metric == Metric::Cosine;
    const int64_t xrows = layers * n_, yrows = self_ ? 0 : layers * m_;
    const int64_t tasks = (xrows + kStatsChunk - 1) / kStatsChunk +
                          (yrows + kStatsChunk - 1) / kStatsChunk;
    const int64_t xtasks = (xrows + kStatsChunk - 1) / kStatsChunk;
    parallel_for(tasks, workers_, cancel_, [&](int64_t task, int) {
      const bool is_x = task < xtasks;
      const int64_t first = (is_x ? task : task - xtasks) * kStatsChunk;
      const int64_t end = std::min(first + kStatsChunk, is_x ? xrows : yrows);
      for (int64_t r = first; r < end; ++r) {
        const int64_t g = r / (is_x ? n_ : m_), i = r % (is_x ? n_ : m_);
        const float* row = (is_x ? x_ + (l0 + g) * n_ * d_ : y_ + (l0 + g) * m_ * d_) + i * d_;
        RowStats& s = is_x ? stats_x_[r] : stats_y_[r];
        ks_->row_stats(row, d_, normalise, &s);
        (is_x ? scale_x_ : scale_y_)[r] = s.scale;
        (is_x ? sqn_x_ : sqn_y_)[r] = s.sq_norm;
      }
    });
    for (int64_t g = 0; g < layers; ++g) window_[g] = key_window(g);
  }

  // Twice a bound on |approximate tile key - exact key| over all pairs of layer g (see the
  // derivation in the header comment of knn_cpu.cpp and in the engine notes below).
  float key_window(int64_t g) const {
    auto maxima = [&](const std::vector<RowStats>& st, int64_t first, int64_t count, double* norm,
                      double* packed, double* err) {
      *norm = *packed = *err = 0;
      for (int64_t r = first; r < first + count; ++r) {
        *norm = std::max(*norm, st[r].norm);
        *packed = std::max(*packed, st[r].packed_norm);
        *err = std::max(*err, st[r].packing_error);
      }
    };
    double ax, px, ex, ay, py, ey;
    maxima(stats_x_, g * n_, n_, &ax, &px, &ex);
    if (self_) {
      ay = ax, py = px, ey = ex;
    } else {
      maxima(stats_y_, g * m_, m_, &ay, &py, &ey);
    }
    // Tile product error: fp32 GEMM sums dpad products per lane (gamma bound on the absolute
    // products, <= |x||y| by Cauchy-Schwarz); bf16 adds the operand rounding |e_x||y| + |x~||e_y|
    // and flushes denormals (<= 1e-30 in total).
    const double dp = static_cast<double>(dpad_);
    const double product = ks_->low_precision
                               ? ex * ay + px * ey + gamma(dp + 2) * px * py + 1e-30
                               : gamma(dp + 2) * ax * ay;
    double error;
    if (p_.metric == Metric::SquaredL2) {
      // key = 2 g - (|x|^2 + |y|^2) in fp32 with fp32-rounded norms; exact = sum (x - y)^2 in
      // 16 fused lanes: error <= gamma_{d+3} (|x| + |y|)^2.
      const double norms = ax * ax + ay * ay;
      error = 2 * product + 4 * kUnit * (2 * ax * ay + norms) +
              gamma(static_cast<double>(d_) + 3) * (ax + ay) * (ax + ay);
    } else {
      // exact = sum of fp32 products in 16 fused lanes: error <= gamma_{d+2} |x||y|.
      error = product + gamma(static_cast<double>(d_) + 2) * ax * ay;
    }
    return round_up_to_float(2 * error * (1 + 1e-6) + 1e-30);
  }

  // Phase 1: all tiles of the layer group, each feeding both of its row blocks.
  void compute_tiles(int64_t l0, int64_t layers) {
    struct Task {
      int32_t g, i, j;
    };
    const int64_t bx = (n_ + kBlock - 1) / kBlock, by = (m_ + kBlock - 1) / kBlock;
    std::vector<Task> tasks;
    for (int64_t g = 0; g < layers; ++g)
      for (int64_t i = 0; i < bx; ++i)
        for (int64_t j = self_ ? i : 0; j < by; ++j)
          tasks.push_back({int32_t(g), int32_t(i), int32_t(j)});
    for (auto& w : workers_state_) w.cached_layer = w.cached_block = -1;
    parallel_for(static_cast<int64_t>(tasks.size()), workers_, cancel_, [&](int64_t t, int wid) {
      run_tile(l0, tasks[t].g, tasks[t].i, tasks[t].j, workers_state_[wid], lists_[wid]);
    });
  }

  void run_tile(int64_t l0, int64_t g, int64_t bi, int64_t bj, Worker& w, CandidateLists& lists) {
    const int64_t i0 = bi * kBlock, ni = std::min(kBlock, n_ - i0);
    const int64_t j0 = bj * kBlock, nj = std::min(kBlock, m_ - j0);
    const float* xl = x_ + (l0 + g) * n_ * d_;
    const float* yl = y_ + (l0 + g) * m_ * d_;
    const float* scale_y = self_ ? scale_x_.data() + g * n_ : scale_y_.data() + g * m_;
    const float* sqn_y = self_ ? sqn_x_.data() + g * n_ : sqn_y_.data() + g * m_;
    if (w.cached_layer != g || w.cached_block != bi) {
      ks_->pack_vector_side(xl + i0 * d_, ni, d_, scale_x_.data() + g * n_ + i0, dpad_,
                            w.vector_panel.get());
      w.cached_layer = g;
      w.cached_block = bi;
    }
    ks_->pack_broadcast_side(yl + j0 * d_, nj, d_, scale_y + j0, dpad_, w.broadcast_panel.get());
    ks_->gemm(w.broadcast_panel.get(), round_up(nj, ks_->mr), w.vector_panel.get(),
              round_up(ni, ks_->nr), dpad_, w.tile.data(), kTileStride);
    const bool l2 = p_.metric == Metric::SquaredL2;
    const bool diagonal = self_ && bi == bj;
    ScanTarget target;
    target.lists = &lists;
    target.window = window_[g];
    target.col_list = g * n_ + i0;
    target.row_list = self_ && !diagonal ? g * n_ + j0 : -1;
    target.col_id = int32_t(i0);
    target.row_id = int32_t(j0);
    target.l2_row = l2 ? sqn_y + j0 : nullptr;
    target.l2_col = l2 ? sqn_x_.data() + g * n_ + i0 : nullptr;
    target.skip_diagonal = diagonal && exclude_;
    ks_->scan_tile(w.tile.data(), kTileStride, int(nj), int(ni), target);
  }

  // Phase 2: per row, union the workers' candidates, keep those within the window of the k-th
  // best approximate key, re-score them exactly and write the k best in the shared order.
  void merge(int64_t l0, int64_t layers) {
    const int64_t rows = layers * n_;
    parallel_for((rows + kMergeChunk - 1) / kMergeChunk, workers_, cancel_,
                 [&](int64_t task, int wid) {
                   const int64_t end = std::min(rows, (task + 1) * kMergeChunk);
                   for (int64_t r = task * kMergeChunk; r < end; ++r) {
                     finish_row(l0, r / n_, r % n_, workers_state_[wid]);
                   }
                 });
  }

  void finish_row(int64_t l0, int64_t g, int64_t i, Worker& w) {
    const int64_t row = g * n_ + i;
    const int k = p_.k;
    bool exact_scan = direct_;
    w.keys.clear();
    w.ids.clear();
    if (!direct_) {
      for (auto& lists : lists_) {
        if (lists.overflowed(row)) exact_scan = true;
        const int c = lists.count(row);
        w.keys.insert(w.keys.end(), lists.keys(row), lists.keys(row) + c);
        w.ids.insert(w.ids.end(), lists.ids(row), lists.ids(row) + c);
        lists.reset(row);
      }
      if (static_cast<int64_t>(w.keys.size()) < k) exact_scan = true;
    }
    if (exact_scan) {
      w.ids.clear();
      for (int64_t j = 0; j < m_; ++j)
        if (!(exclude_ && j == i)) w.ids.push_back(int32_t(j));
    } else {
      w.sorted_keys = w.keys;
      std::nth_element(w.sorted_keys.begin(), w.sorted_keys.begin() + (k - 1),
                       w.sorted_keys.end(), std::greater<float>());
      const float threshold = lower_difference(w.sorted_keys[k - 1], window_[g]);
      size_t kept = 0;
      for (size_t c = 0; c < w.keys.size(); ++c)
        if (w.keys[c] >= threshold) w.ids[kept++] = w.ids[c];
      w.ids.resize(kept);
    }
    score_exactly(l0, g, i, w);
    const int64_t count = static_cast<int64_t>(w.ranked.size());
    auto before = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
      return ranks_before(a.first, a.second, b.first, b.second);
    };
    if (count > k) {
      std::nth_element(w.ranked.begin(), w.ranked.begin() + (k - 1), w.ranked.end(), before);
    }
    std::sort(w.ranked.begin(), w.ranked.begin() + std::min<int64_t>(k, count), before);
    int32_t* out_i = indices_ + ((l0 + g) * n_ + i) * k;
    float* out_s = scores_ + ((l0 + g) * n_ + i) * k;
    for (int c = 0; c < k; ++c) {
      out_i[c] = w.ranked[c].second;
      out_s[c] = rank_key(w.ranked[c].first, p_.metric);
    }
  }

  // w.ranked = (exact key, id) for every id in w.ids.
  void score_exactly(int64_t l0, int64_t g, int64_t i, Worker& w) {
    const float* xrow = x_ + ((l0 + g) * n_ + i) * d_;
    const float* yl = y_ + (l0 + g) * m_ * d_;
    const float* scale_y = self_ ? scale_x_.data() + g * n_ : scale_y_.data() + g * m_;
    const float sx = scale_x_[g * n_ + i];
    constexpr int kBatch = 64;
    w.ranked.clear();
    w.rows.resize(kBatch);
    w.row_scales.resize(kBatch);
    w.exact.resize(kBatch);
    for (size_t first = 0; first < w.ids.size(); first += kBatch) {
      const int count = static_cast<int>(std::min<size_t>(kBatch, w.ids.size() - first));
      for (int q = 0; q < count; ++q) {
        const int32_t j = w.ids[first + q];
        w.rows[q] = yl + j * d_;
        w.row_scales[q] = scale_y[j];
      }
      if (p_.metric == Metric::SquaredL2) {
        ks_->sqdist_batch(xrow, w.rows.data(), count, d_, w.exact.data());
      } else {
        ks_->dot_batch(xrow, sx, w.rows.data(), w.row_scales.data(), count, d_, w.exact.data());
      }
      for (int q = 0; q < count; ++q)
        w.ranked.emplace_back(rank_key(w.exact[q], p_.metric), w.ids[first + q]);
    }
  }

  const KnnProblem& p_;
  int32_t* indices_;
  float* scores_;
  const std::atomic<bool>& cancel_;
  const KernelSet* ks_ = nullptr;
  bool self_ = true, exclude_ = true, direct_ = false;
  const float* x_ = nullptr;
  const float* y_ = nullptr;
  int64_t n_ = 0, m_ = 0, d_ = 0, dpad_ = 0, group_ = 1;
  int workers_ = 1, capacity_ = 1;
  std::vector<RowStats> stats_x_, stats_y_;
  std::vector<float> scale_x_, scale_y_, sqn_x_, sqn_y_, window_;
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

void knn(const KnnProblem& problem, int32_t* indices, float* scores, int num_threads,
         const std::atomic<bool>& cancel) {
  if (problem.L <= 0 || problem.n <= 0 || problem.k <= 0) return;
  Engine engine(problem, indices, scores, num_threads, cancel);
  engine.run();
}

}  // namespace layerknn::cpu
