// CPU neighbour-overlap engine (see overlap_cpu.h), organised by prompt rather than by layer
// pair. For one prompt i, every neighbour id in B's rows gets a bit set of the B layers that list
// it; then each (layer a, id) of A's rows adds that bit set to the counter row C_i[a][:], so
// C_i[a][b] = |A_a(i) ∩ B_b(i)| with work proportional to La·k·(Lb/64) word operations instead
// of La·Lb merges. Ids map to per-prompt slots through a stamp array (no clearing between
// prompts). Threads own blocks of prompts; counts are summed per thread and reduced at the end.
// B's layers are taken in chunks of at most chunk_layers(k) (one chunk for all usual shapes), so
// the bit sets, [chunk * k slots, chunk / 64 words], stay a few MiB however large Lb is.
#include "cpu/overlap_cpu.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/arch.h"
#include "cpu/parallel.h"

namespace layerknn::cpu {
namespace {

constexpr int kWordBits = 64;

// row[0 .. 64) += bit b of `bits`. Dense form, vectorised per CPU by function multi-versioning.
template <class Counter>
LAYERKNN_X86_CLONES
void add_bits_dense(Counter* row, uint64_t bits) {
  for (int b = 0; b < kWordBits; ++b) row[b] += static_cast<Counter>((bits >> b) & 1u);
}

template <class Counter>
inline void add_bits(Counter* row, uint64_t bits) {
  if (__builtin_popcountll(bits) > 6) {
    add_bits_dense(row, bits);
    return;
  }
  while (bits) {
    row[__builtin_ctzll(bits)] += 1;
    bits &= bits - 1;
  }
}

// B layers per chunk: the largest multiple of 64 whose bit sets (chunk^2 k / 8 bytes) fit in
// about 4 MiB, at least one word's worth (64 layers, 512 k bytes).
int64_t chunk_layers(int k) {
  constexpr int64_t kBudgetBytes = int64_t{4} << 20;
  int64_t chunk = kWordBits;
  while ((chunk + kWordBits) * (chunk + kWordBits) * k / 8 <= kBudgetBytes) chunk += kWordBits;
  return chunk;
}

// Per-thread scratch for one (prompt, chunk of B layers) pass at a time.
struct PromptScratch {
  std::vector<int32_t> stamp;     // [id_limit] pass that last gave id a slot, -1 initially
  std::vector<int32_t> slot;      // [id_limit] slot of id in the stamped pass
  std::vector<uint64_t> b_layers; // [max_slots, words] bit set of the chunk's B layers listing the slot's id
  std::vector<int32_t> last_a;    // [max_slots] last A layer that counted the slot (dedupe)
  int words = 0;                  // words per bit set: chunk / 64
  int32_t pass = -1;              // current pass number (stamps of earlier passes are stale)

  PromptScratch(int64_t id_limit, int64_t max_slots, int words_)
      : stamp(id_limit, -1), slot(id_limit), b_layers(max_slots * words_), last_a(max_slots),
        words(words_) {}

  void next_pass() {
    if (pass == INT32_MAX) {  // wrap: forget every stamp
      std::fill(stamp.begin(), stamp.end(), -1);
      pass = -1;
    }
    ++pass;
  }
};

// Adds C_i[a][b] for prompt i and the B layers [lb0, lb1) (lb0 a multiple of 64, lb1 - lb0 at
// most 64 * s.words) into counters[a * row_stride + b], Counter = uint16 or uint32.
template <class Counter>
void count_prompt(const OverlapProblem& p, int64_t i, int64_t lb0, int64_t lb1, PromptScratch& s,
                  Counter* counters, int64_t row_stride) {
  const int k = p.k;
  s.next_pass();
  const int32_t pass = s.pass;
  const int words = static_cast<int>((lb1 - lb0 + kWordBits - 1) / kWordBits);
  int32_t slots = 0;
  for (int64_t lb = lb0; lb < lb1; ++lb) {
    const int32_t* row = p.b + (lb * p.n + i) * p.kb;
    const int64_t bit = lb - lb0;
    for (int c = 0; c < k; ++c) {
      const int32_t id = row[c];
      if (s.stamp[id] != pass) {
        s.stamp[id] = pass;
        s.slot[id] = slots;
        std::memset(&s.b_layers[static_cast<size_t>(slots) * s.words], 0, sizeof(uint64_t) * words);
        s.last_a[slots] = -1;
        ++slots;
      }
      s.b_layers[static_cast<size_t>(s.slot[id]) * s.words + bit / kWordBits] |=
          uint64_t{1} << (bit % kWordBits);
    }
  }
  for (int64_t la = 0; la < p.La; ++la) {
    const int32_t* row = p.a + (la * p.n + i) * p.ka;
    Counter* out = counters + la * row_stride + lb0;
    for (int c = 0; c < k; ++c) {
      const int32_t id = row[c];
      if (id >= static_cast<int32_t>(s.stamp.size()) || s.stamp[id] != pass) continue;
      const int32_t sl = s.slot[id];
      if (s.last_a[sl] == la) continue;  // duplicate id within this row of A counts once
      s.last_a[sl] = static_cast<int32_t>(la);
      const uint64_t* bits = &s.b_layers[static_cast<size_t>(sl) * s.words];
      for (int w = 0; w < words; ++w) {
        if (bits[w]) add_bits(out + w * kWordBits, bits[w]);
      }
    }
  }
}

// All of B's layers for prompt i, one chunk of at most 64 * s.words layers at a time.
template <class Counter>
void count_prompt(const OverlapProblem& p, int64_t i, PromptScratch& s, Counter* counters,
                  int64_t row_stride) {
  const int64_t chunk = int64_t{s.words} * kWordBits;
  for (int64_t lb0 = 0; lb0 < p.Lb; lb0 += chunk)
    count_prompt(p, i, lb0, std::min(p.Lb, lb0 + chunk), s, counters, row_stride);
}

int32_t max_id(const int32_t* v, int64_t rows, int width, int k) {
  int32_t best = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < k; ++c) best = std::max(best, v[r * width + c]);
  }
  return best;
}

}  // namespace

void overlap(const OverlapProblem& p, double* mean, uint16_t* counts, int num_threads,
             const std::atomic<bool>& cancel) {
  if (num_threads <= 0) num_threads = default_num_threads();
  // Only ids listed by B need slots; ids of A beyond that range can never match.
  const int64_t id_limit = int64_t{max_id(p.b, p.Lb * p.n, p.kb, p.k)} + 1;
  const int words = static_cast<int>((p.Lb + kWordBits - 1) / kWordBits);
  const int64_t row_stride = int64_t{words} * kWordBits;  // counter rows padded to whole words
  const int chunk_words = static_cast<int>(std::min<int64_t>(words, chunk_layers(p.k) / kWordBits));
  const int64_t max_slots = std::min<int64_t>(p.Lb, int64_t{chunk_words} * kWordBits) * p.k;

  // Prompt blocks: per-prompt counts are staged [block, La, row_stride] and written out
  // transposed so that every write to counts [La, Lb, n] covers a contiguous run of prompts.
  const int64_t stage_bytes = p.La * row_stride * int64_t{sizeof(uint16_t)};
  const int64_t block = counts ? std::clamp<int64_t>((1 << 20) / std::max<int64_t>(stage_bytes, 1), 1, 64)
                               : 256;
  const int64_t num_blocks = (p.n + block - 1) / block;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads, num_blocks));

  std::vector<std::vector<uint64_t>> totals(threads);  // per thread [La, row_stride]
  std::vector<std::unique_ptr<PromptScratch>> scratches(threads);
  parallel_for(num_blocks, threads, cancel, [&](int64_t blk, int worker) {
    thread_local std::vector<uint16_t> stage;
    std::vector<uint64_t>& total = totals[worker];
    if (total.empty()) total.assign(p.La * row_stride, 0);
    if (!scratches[worker]) scratches[worker] = std::make_unique<PromptScratch>(id_limit, max_slots, chunk_words);
    PromptScratch& scratch = *scratches[worker];
    const int64_t i0 = blk * block, i1 = std::min(p.n, i0 + block);
    if (counts) {
      stage.assign((i1 - i0) * p.La * row_stride, 0);
      for (int64_t i = i0; i < i1; ++i) {
        count_prompt<uint16_t>(p, i, scratch, stage.data() + (i - i0) * p.La * row_stride, row_stride);
      }
      for (int64_t la = 0; la < p.La; ++la) {
        for (int64_t lb = 0; lb < p.Lb; ++lb) {
          uint16_t* dst = counts + (la * p.Lb + lb) * p.n;
          uint64_t sum = 0;
          for (int64_t i = i0; i < i1; ++i) {
            const uint16_t c = stage[((i - i0) * p.La + la) * row_stride + lb];
            dst[i] = c;
            sum += c;
          }
          total[la * row_stride + lb] += sum;
        }
      }
    } else {
      // At most 256 prompts per block and k <= 65535 per prompt: a block's sums fit in uint32.
      std::vector<uint32_t> block_total(p.La * row_stride, 0);
      for (int64_t i = i0; i < i1; ++i) count_prompt<uint32_t>(p, i, scratch, block_total.data(), row_stride);
      for (size_t t = 0; t < block_total.size(); ++t) total[t] += block_total[t];
    }
  });
  const double inv = 1.0 / (static_cast<double>(p.k) * static_cast<double>(p.n));
  for (int64_t la = 0; la < p.La; ++la) {
    for (int64_t lb = 0; lb < p.Lb; ++lb) {
      uint64_t sum = 0;
      for (const auto& total : totals) {
        if (!total.empty()) sum += total[la * row_stride + lb];
      }
      mean[la * p.Lb + lb] = static_cast<double>(sum) * inv;
    }
  }
}

}  // namespace layerknn::cpu
