// CPU engine for the neighbourhood measures (see overlap_measures.h). Prompts are taken in chunks
// sized so that the sorted keys of every layer's rows for the chunk fit a fixed budget; each chunk
// is sorted once in parallel (set measures only), then threads own tiles (one A layer, a run of B
// layers) and score every prompt of the chunk in order with a pure function of measure_scores.h.
// A tile adds its per-pair sums into `mean`, which no other thread touches, so the result is the
// same for any thread count. Cycle also needs, per A layer, the prompts whose row lists each
// prompt: built once up front, about the size of A's used columns. Other memory is independent
// of La * Lb beyond the outputs.
#include "cpu/overlap_measures.h"

#include <algorithm>
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
// k-NN graph, which turns the cycle test into one merge per pair.
struct ReverseLists {
  std::vector<int64_t> offsets;  // [La, n + 1] start of prompt i's list in `sources`
  std::vector<int32_t> sources;  // [La * n * k] listing prompts, ascending within each list
};

ReverseLists reverse_lists(const OverlapProblem& p, int threads, const std::atomic<bool>& cancel) {
  ReverseLists r;
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

// Scores prompts [i0, i1) of every layer pair: score(la, lb, i, scratch) is the numerator of
// the pair's score for prompt i, `denominator` maps it to [0, 1]. Adds the numerators, summed
// over i in order, into sums [La, Lb]; writes float32 scores [La, Lb, n] when asked.
template <class Score>
void score_chunk(const OverlapProblem& p, int64_t i0, int64_t i1, double denominator, double* sums,
                 float* scores, std::vector<std::vector<int32_t>>& scratch, int threads,
                 const std::atomic<bool>& cancel, const Score& score) {
  // Tiles of one A layer and a run of B layers, about four per thread.
  const int64_t per_la = std::clamp<int64_t>((4 * threads + p.La - 1) / p.La, 1, p.Lb);
  const int64_t lb_block = (p.Lb + per_la - 1) / per_la;
  const int64_t tiles_per_la = (p.Lb + lb_block - 1) / lb_block;
  parallel_for(p.La * tiles_per_la, threads, cancel, [&](int64_t task, int worker) {
    const int64_t la = task / tiles_per_la;
    const int64_t lb0 = (task % tiles_per_la) * lb_block, lb1 = std::min(p.Lb, lb0 + lb_block);
    int32_t* s = scratch[worker].data();
    for (int64_t lb = lb0; lb < lb1; ++lb) {
      double sum = 0.0;
      float* out = scores ? scores + (la * p.Lb + lb) * p.n : nullptr;
      for (int64_t i = i0; i < i1; ++i) {
        const double v = score(la, lb, i, s);
        sum += v;
        if (out) out[i] = static_cast<float>(v / denominator);
      }
      sums[la * p.Lb + lb] += sum;
    }
  });
}

// Prompts per chunk: as many as keep the sorted keys of all sorted layers within the budget.
int64_t chunk_prompts(const OverlapProblem& p, int64_t sorted_layers) {
  if (sorted_layers == 0) return p.n;
  const int64_t per_prompt = sorted_layers * (int64_t{p.k} * 8 + 4);
  return std::clamp<int64_t>(kChunkBudgetBytes / per_prompt, 1, p.n);
}

}  // namespace

bool valid_measure(int code) { return code >= 0 && code <= static_cast<int>(Measure::Edit); }

void overlap_measure(const OverlapProblem& p, Measure measure, double* mean, float* scores,
                     int num_threads, const std::atomic<bool>& cancel) {
  if (num_threads <= 0) num_threads = default_num_threads();
  const int k = p.k;
  const bool sets = measure == Measure::Mutual || measure == Measure::Jaccard || measure == Measure::Rank;
  const bool sort_a = sets, sort_b = sets || measure == Measure::Cycle;
  const double denominator = (measure == Measure::Jaccard || measure == Measure::Cycle) ? 1.0 : k;
  const int64_t P = chunk_prompts(p, (sort_a ? p.La : 0) + (sort_b ? p.Lb : 0));
  const int threads = num_threads;

  SortedChunk keys_a, keys_b;
  if (sort_a) keys_a.reserve(p.La, P, k);
  if (sort_b) keys_b.reserve(p.Lb, P, k);
  ReverseLists reverse;
  if (measure == Measure::Cycle) reverse = reverse_lists(p, threads, cancel);
  std::vector<std::vector<int32_t>> scratch(threads, std::vector<int32_t>(k + 1, 0));
  std::fill(mean, mean + p.La * p.Lb, 0.0);

  for (int64_t i0 = 0; i0 < p.n && !cancel.load(); i0 += P) {
    const int64_t i1 = std::min(p.n, i0 + P);
    if (sort_a) sort_chunk(p.a, p.La, p.n, p.ka, k, i0, i1, keys_a, threads, cancel);
    if (sort_b) sort_chunk(p.b, p.Lb, p.n, p.kb, k, i0, i1, keys_b, threads, cancel);
    auto run = [&](const auto& score) {
      score_chunk(p, i0, i1, denominator, mean, scores, scratch, threads, cancel, score);
    };
    const int32_t* a = p.a;
    const int32_t* b = p.b;
    switch (measure) {
      case Measure::Mutual:
        run([&](int64_t la, int64_t lb, int64_t i, int32_t*) {
          const int64_t l = i - i0;
          return double(shared_ids(keys_a.row(la, l), keys_a.length(la, l), keys_b.row(lb, l),
                                   keys_b.length(lb, l)));
        });
        break;
      case Measure::Jaccard:
        run([&](int64_t la, int64_t lb, int64_t i, int32_t*) {
          const int64_t l = i - i0;
          return jaccard(keys_a.row(la, l), keys_a.length(la, l), keys_b.row(lb, l), keys_b.length(lb, l));
        });
        break;
      case Measure::Rank:
        run([&](int64_t la, int64_t lb, int64_t i, int32_t* s) {
          const int64_t l = i - i0;
          return rank_overlap(keys_a.row(la, l), keys_a.length(la, l), keys_b.row(lb, l),
                              keys_b.length(lb, l), k, s);
        });
        break;
      case Measure::Cycle:
        run([&](int64_t la, int64_t lb, int64_t i, int32_t*) {
          const int64_t* offset = &reverse.offsets[la * (p.n + 1) + i];
          return double(cycle_hit(keys_b.row(lb, i - i0), keys_b.length(lb, i - i0),
                                  reverse.sources.data() + offset[0], offset[1] - offset[0]));
        });
        break;
      case Measure::Lcs:
        run([&](int64_t la, int64_t lb, int64_t i, int32_t* s) {
          return double(lcs_length(a + (la * p.n + i) * p.ka, b + (lb * p.n + i) * p.kb, k, s));
        });
        break;
      case Measure::Edit:
        run([&](int64_t la, int64_t lb, int64_t i, int32_t* s) {
          return double(k - edit_distance(a + (la * p.n + i) * p.ka, b + (lb * p.n + i) * p.kb, k, s));
        });
        break;
    }
  }
  const double total = denominator * static_cast<double>(p.n);  // exact: k * n < 2^53
  for (int64_t t = 0; t < p.La * p.Lb; ++t) mean[t] /= total;
}

}  // namespace layerknn::cpu
