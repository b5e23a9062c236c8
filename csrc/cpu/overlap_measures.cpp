// CPU engine for the neighbourhood measures (see overlap_measures.h). Threads own tiles (one A
// layer, a run of B layers); for each prompt i a tile builds a lookup of A's row (id -> first
// column and column mask, stamped so it is never cleared) and probes it with each B row through
// a pure function of measure_scores.h: O(k) per pair for every measure (bit-parallel LCS and
// edit distance for k <= 64, an O(k^2) dynamic programme beyond). A tile adds its per-pair sums
// into `mean`, which no other thread touches, so results are the same for any thread count.
// Set measures read B rows as sorted keys (distinct ids), sorted once per chunk of prompts sized
// to a fixed budget. Cycle looks up, instead of A's row, the prompts whose A row lists i (reverse
// lists built once, about the size of A's used columns). The id lookup has one entry per id up
// to A's largest (the Python layer relabels huge ids first); nothing else grows with La * Lb
// beyond the outputs.
#include "cpu/overlap_measures.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/measure_scores.h"
#include "cpu/parallel.h"

namespace layerknn::cpu {
namespace {

using namespace measures;

constexpr int64_t kChunkBudgetBytes = int64_t{16} << 20;  // sorted keys of one chunk, all layers
constexpr int64_t kSortBlock = 256;                       // prompts per sorting task

// Sorted keys (sort_row_keys) of prompts [i0, i0 + span) for every layer of one side.
struct SortedChunk {
  std::vector<uint64_t> keys;     // [L, P, k]
  std::vector<int32_t> lengths;   // [L, P] distinct ids per row
  int64_t P = 0;
  int k = 0;

  void reserve(int64_t L, int64_t P_, int k_) {
    P = P_;
    k = k_;
    keys.resize(L * P * k);
    lengths.resize(L * P);
  }
  const uint64_t* row(int64_t l, int64_t local) const { return &keys[(l * P + local) * k]; }
  int length(int64_t l, int64_t local) const { return lengths[l * P + local]; }
};

void sort_chunk(const int32_t* rows,  // [L, n, width] neighbour ids
                int64_t L, int64_t n, int width, int k, int64_t i0, int64_t i1, SortedChunk& out,
                int threads, const std::atomic<bool>& cancel) {
  const int64_t blocks = (i1 - i0 + kSortBlock - 1) / kSortBlock;
  parallel_for(L * blocks, threads, cancel, [&](int64_t task, int) {
    const int64_t l = task / blocks;
    const int64_t j0 = i0 + (task % blocks) * kSortBlock, j1 = std::min(i1, j0 + kSortBlock);
    for (int64_t i = j0; i < j1; ++i) {
      const int64_t local = i - i0;
      out.lengths[l * out.P + local] =
          sort_row_keys(rows + (l * n + i) * width, k, &out.keys[(l * out.P + local) * k]);
    }
  });
}

// For every A layer and prompt i, the prompts j whose A row lists i (ascending): the reverse
// k-NN graph: looked up like an A row, it turns the cycle test into k probes per pair.
struct ReverseLists {
  std::vector<int64_t> offsets;  // [La, n + 1] start of prompt i's list in `sources`
  std::vector<int32_t> sources;  // [La * n * k] listing prompts, ascending within each list
  int64_t n = 0;

  const int32_t* list(int64_t la, int64_t i) const { return sources.data() + offsets[la * (n + 1) + i]; }
  int64_t size(int64_t la, int64_t i) const {
    return offsets[la * (n + 1) + i + 1] - offsets[la * (n + 1) + i];
  }
};

ReverseLists reverse_lists(const OverlapProblem& p, int threads, const std::atomic<bool>& cancel) {
  ReverseLists r;
  r.n = p.n;
  r.offsets.assign(p.La * (p.n + 1), 0);
  r.sources.resize(p.La * p.n * p.k);
  parallel_for(p.La, threads, cancel, [&](int64_t la, int) {
    int64_t* offset = &r.offsets[la * (p.n + 1)];
    const int32_t* rows = p.a + la * p.n * p.ka;
    auto is_prompt = [&](int32_t id) { return static_cast<uint32_t>(id) < static_cast<uint64_t>(p.n); };
    for (int64_t j = 0; j < p.n; ++j) {
      for (int c = 0; c < p.k; ++c) {
        if (is_prompt(rows[j * p.ka + c])) ++offset[rows[j * p.ka + c] + 1];
      }
    }
    offset[0] = la * p.n * p.k;
    for (int64_t i = 0; i < p.n; ++i) offset[i + 1] += offset[i];
    std::vector<int64_t> cursor(offset, offset + p.n);
    for (int64_t j = 0; j < p.n; ++j) {
      for (int c = 0; c < p.k; ++c) {
        const int32_t id = rows[j * p.ka + c];
        if (is_prompt(id)) r.sources[cursor[id]++] = static_cast<int32_t>(j);
      }
    }
  });
  return r;
}

// Per-thread state: the lookup of the current A row (indexed by id, `ids` entries) and scratch.
struct Worker {
  std::vector<int32_t> stamp, first;  // [ids]
  std::vector<uint64_t> mask;         // [ids] when the measure needs column masks
  std::vector<int32_t> depth_hits;    // [k] zeros between uses
  std::vector<uint64_t> match;        // [k] match masks of one B row
  std::vector<int32_t> dp_row;        // [k + 1] dynamic-programme row (k > 64)
  std::vector<double> sums;           // [Lb] per-pair sums of the current tile
  int32_t pass = 0;
  int distinct = 0;                   // distinct ids of the current A row

  Worker(int64_t ids, bool masks, int k, int64_t Lb)
      : stamp(ids, -1), first(ids), mask(masks ? ids : 0), depth_hits(k, 0), match(k),
        dp_row(k + 1), sums(Lb) {}

  // Builds the lookup of row[0 .. k) (ids already checked to be < stamp.size()).
  RowLookup look_up(const int32_t* row, int64_t k) {  // [k] the A row (or a reverse list)
    if (stamp.empty()) return RowLookup{nullptr, nullptr, nullptr, 0, 0};  // measure needs none
    if (++pass == INT32_MAX) {  // wrap: forget every stamp
      std::fill(stamp.begin(), stamp.end(), -1);
      pass = 0;
    }
    distinct = 0;
    for (int64_t c = 0; c < k; ++c) {
      const int32_t id = row[c];
      if (stamp[id] != pass) {
        stamp[id] = pass;
        first[id] = static_cast<int32_t>(c);
        if (!mask.empty()) mask[id] = 0;
        ++distinct;
      }
      if (!mask.empty()) mask[id] |= uint64_t{1} << c;
    }
    return RowLookup{stamp.data(), first.data(), mask.empty() ? nullptr : mask.data(), pass,
                     static_cast<int64_t>(stamp.size())};
  }
};

// Scores prompts [i0, i1) of every layer pair: score(lookup, la, lb, i, worker) is the numerator
// of the pair's score for prompt i, where the lookup holds A's row (la, i) or, when `reverse` is
// given (cycle), prompt i's reverse list; `denominator` maps it to [0, 1]. Adds the numerators,
// summed over i in order, into sums [La, Lb]; writes float32 scores [La, Lb, n] when asked.
// Tiles are one A layer and a run of B layers, about four per thread.
template <class Score>
void score_chunk(const OverlapProblem& p, const ReverseLists* reverse, int64_t i0, int64_t i1,
                 double denominator, double* sums, float* scores, std::vector<Worker>& workers,
                 int threads, const std::atomic<bool>& cancel, const Score& score) {
  const int64_t per_la = std::clamp<int64_t>((4 * threads + p.La - 1) / p.La, 1, p.Lb);
  const int64_t lb_block = (p.Lb + per_la - 1) / per_la;
  const int64_t tiles_per_la = (p.Lb + lb_block - 1) / lb_block;
  parallel_for(p.La * tiles_per_la, threads, cancel, [&](int64_t task, int worker) {
    const int64_t la = task / tiles_per_la;
    const int64_t lb0 = (task % tiles_per_la) * lb_block, lb1 = std::min(p.Lb, lb0 + lb_block);
    Worker& w = workers[worker];
    std::fill(w.sums.begin(), w.sums.begin() + (lb1 - lb0), 0.0);
    for (int64_t i = i0; i < i1; ++i) {
      const RowLookup lookup = reverse ? w.look_up(reverse->list(la, i), reverse->size(la, i))
                                       : w.look_up(p.a + (la * p.n + i) * p.ka, p.k);
      for (int64_t lb = lb0; lb < lb1; ++lb) {
        const double v = score(lookup, la, lb, i, w);
        w.sums[lb - lb0] += v;
        if (scores) scores[(la * p.Lb + lb) * p.n + i] = static_cast<float>(v / denominator);
      }
    }
    for (int64_t lb = lb0; lb < lb1; ++lb) sums[la * p.Lb + lb] += w.sums[lb - lb0];
  });
}

// Prompts per chunk: as many as keep the sorted keys of all sorted layers within the budget.
int64_t chunk_prompts(const OverlapProblem& p, int64_t sorted_layers) {
  if (sorted_layers == 0) return p.n;
  const int64_t per_prompt = sorted_layers * (int64_t{p.k} * 8 + 4);
  return std::clamp<int64_t>(kChunkBudgetBytes / per_prompt, 1, p.n);
}

int32_t max_id(const int32_t* v, int64_t rows, int width, int k) {  // v [rows, width]
  int32_t best = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < k; ++c) best = std::max(best, v[r * width + c]);
  }
  return best;
}

}  // namespace

bool valid_measure(int code) { return code >= 0 && code <= static_cast<int>(Measure::Edit); }

void overlap_measure(const OverlapProblem& p, Measure measure, double* mean, float* scores,
                     int num_threads, const std::atomic<bool>& cancel) {
  if (num_threads <= 0) num_threads = default_num_threads();
  const int threads = static_cast<int>(std::min<int64_t>(num_threads, p.La * p.Lb));  // tiles at most
  const int k = p.k;
  const bool cycle = measure == Measure::Cycle;
  const bool sequence = measure == Measure::Lcs || measure == Measure::Edit;
  const bool bits = sequence && k <= 64;
  const double denominator = (measure == Measure::Jaccard || cycle) ? 1.0 : k;
  // Set measures read B rows as sorted keys, a chunk of prompts at a time.
  const bool sort_b = !sequence && !cycle;
  const int64_t P = chunk_prompts(p, sort_b ? p.Lb : 0);
  SortedChunk keys_b;
  if (sort_b) keys_b.reserve(p.Lb, P, k);
  ReverseLists reverse;
  if (cycle) reverse = reverse_lists(p, threads, cancel);
  // The lookup covers A's ids, or for cycle the prompts j < n of the reverse lists.
  const int64_t ids = cycle ? p.n : int64_t{max_id(p.a, p.La * p.n, p.ka, k)} + 1;
  std::vector<Worker> workers;
  workers.reserve(threads);
  for (int t = 0; t < threads; ++t) workers.emplace_back(ids, bits, k, p.Lb);
  std::fill(mean, mean + p.La * p.Lb, 0.0);

  for (int64_t i0 = 0; i0 < p.n && !cancel.load(); i0 += P) {
    const int64_t i1 = std::min(p.n, i0 + P);
    if (sort_b) sort_chunk(p.b, p.Lb, p.n, p.kb, k, i0, i1, keys_b, threads, cancel);
    auto run = [&](const auto& score) {
      score_chunk(p, cycle ? &reverse : nullptr, i0, i1, denominator, mean, scores, workers, threads,
                  cancel, score);
    };
    auto a_row = [&](int64_t la, int64_t i) { return p.a + (la * p.n + i) * p.ka; };
    auto b_row = [&](int64_t lb, int64_t i) { return p.b + (lb * p.n + i) * p.kb; };
    switch (measure) {
      case Measure::Mutual:
        run([&](const RowLookup& a, int64_t, int64_t lb, int64_t i, Worker&) {
          return double(shared_ids(a, keys_b.row(lb, i - i0), keys_b.length(lb, i - i0), nullptr));
        });
        break;
      case Measure::Jaccard:
        run([&](const RowLookup& a, int64_t, int64_t lb, int64_t i, Worker& w) {
          const int nb = keys_b.length(lb, i - i0);
          return jaccard(shared_ids(a, keys_b.row(lb, i - i0), nb, nullptr), w.distinct, nb);
        });
        break;
      case Measure::Rank:
        run([&](const RowLookup& a, int64_t, int64_t lb, int64_t i, Worker& w) {
          shared_ids(a, keys_b.row(lb, i - i0), keys_b.length(lb, i - i0), w.depth_hits.data());
          return rank_overlap(w.depth_hits.data(), k);
        });
        break;
      case Measure::Cycle:
        run([&](const RowLookup& listing_i, int64_t, int64_t lb, int64_t i, Worker&) {
          return double(cycle_hit(listing_i, b_row(lb, i), k));
        });
        break;
      case Measure::Lcs:
        run([&](const RowLookup& a, int64_t la, int64_t lb, int64_t i, Worker& w) {
          if (!bits) return double(lcs_length(a_row(la, i), b_row(lb, i), k, w.dp_row.data()));
          match_masks(a, b_row(lb, i), k, w.match.data());
          return double(lcs_length_bits(w.match.data(), k));
        });
        break;
      case Measure::Edit:
        run([&](const RowLookup& a, int64_t la, int64_t lb, int64_t i, Worker& w) {
          if (!bits) return double(k - edit_distance(a_row(la, i), b_row(lb, i), k, w.dp_row.data()));
          match_masks(a, b_row(lb, i), k, w.match.data());
          return double(k - edit_distance_bits(w.match.data(), k));
        });
        break;
    }
  }
  const double total = denominator * static_cast<double>(p.n);  // exact: k * n < 2^53
  for (int64_t t = 0; t < p.La * p.Lb; ++t) mean[t] /= total;
}

}  // namespace layerknn::cpu
