// The CPU k-NN engine's merge phase (see row_merge.h): candidate union, final threshold, exact
// re-scoring and ordered selection of the k best of each row.
#include "cpu/row_merge.h"

#include <algorithm>
#include <functional>

#include "cpu/arch.h"

namespace layerknn::cpu {
namespace {

// Most rows end with a few dozen exactly scored candidates at most; selecting the k best of
// so few by sorting is dominated by mispredicted compares.
constexpr int kPlaceLimit = 64;

// Writes the k best of `count` <= kPlaceLimit candidates (keys [count], distinct ids [count]),
// best first by ranks_before, to out_keys/out_ids [k]: each candidate's place is the number
// of candidates that rank before it, counted with branch-free compares that vectorise.
LAYERKNN_X86_CLONES
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

}  // namespace

void RowMerge::finish_row(const LayerSlot& slot, int64_t i, Worker& w, int first,
                          int last) const {
  const bool exact_scan = collect_candidates(slot, i, w, first, last);
  score_exactly(slot, i, w);
  write_row(slot, i, w, exact_scan);
}

// w.ids = row i's candidates that survive the final threshold, or every database row when
// the row must be scanned exactly (returns true then); empties the row's lists.
bool RowMerge::collect_candidates(const LayerSlot& slot, int64_t i, Worker& w, int first,
                                  int last) const {
  const int k = s_.k;
  const bool direct = s_.direct;
  bool exact_scan = direct;
  w.keys.clear();
  w.ids.clear();
  std::vector<CandidateLists>& all = *s_.lists;
  const float solo_threshold = direct ? 0.f : all[first].thresholds()[i];
  for (int li = first; li < last && !direct; ++li) {
    CandidateLists& lists = all[li];
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
void RowMerge::write_row(const LayerSlot& slot, int64_t i, Worker& w, bool exact_scan) const {
  const int k = s_.k;
  w.rows_done += 1;
  w.rescored += static_cast<int64_t>(w.ranked.size());
  w.overflows += exact_scan && !s_.direct;
  const int64_t count = static_cast<int64_t>(w.ranked.size());
  int32_t* out_i = s_.indices + (slot.layer * s_.n + i) * k;
  float* out_s = s_.scores + (slot.layer * s_.n + i) * k;
  if (count <= kPlaceLimit) {
    w.place_keys.resize(count + k);
    w.place_ids.resize(count);
    for (int64_t c = 0; c < count; ++c) {
      w.place_keys[c] = w.ranked[c].first;
      w.place_ids[c] = w.ranked[c].second;
    }
    float* best_keys = w.place_keys.data() + count;
    place_best(w.place_keys.data(), w.place_ids.data(), int(count), k, best_keys, out_i);
    for (int c = 0; c < k; ++c) out_s[c] = rank_key(best_keys[c], s_.metric);
    return;
  }
  auto before = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return ranks_before(a.first, a.second, b.first, b.second);
  };
  std::nth_element(w.ranked.begin(), w.ranked.begin() + (k - 1), w.ranked.end(), before);
  std::sort(w.ranked.begin(), w.ranked.begin() + k, before);
  for (int c = 0; c < k; ++c) {
    out_i[c] = w.ranked[c].second;
    out_s[c] = rank_key(w.ranked[c].first, s_.metric);
  }
}

void RowMerge::finish_solo_layer(const LayerSlot& slot, Worker& w, int wid) const {
  const int64_t n = s_.n;
  const bool reuse = s_.self;
  const std::atomic<bool>& cancel = *s_.cancel;
  w.pair_start.assign(n + 1, 0);
  w.pair_ids.clear();
  w.scanned.assign(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if ((i & 63) == 0 && cancel.load(std::memory_order_relaxed)) return;
    w.scanned[i] = collect_candidates(slot, i, w, wid, wid + 1);
    if (!w.scanned[i]) w.pair_ids.insert(w.pair_ids.end(), w.ids.begin(), w.ids.end());
    w.pair_start[i + 1] = static_cast<int64_t>(w.pair_ids.size());
  }
  w.pair_keys.assign(w.pair_ids.size(), 0.f);
  for (int64_t i = 0; i < n; ++i) {
    if ((i & 63) == 0 && cancel.load(std::memory_order_relaxed)) return;
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
void RowMerge::collect_all(int64_t i, Worker& w) const {
  w.ids.clear();
  for (int64_t j = 0; j < s_.m; ++j)
    if (!(s_.exclude && j == i)) w.ids.push_back(int32_t(j));
}

// w.ranked = (exact key, id) for every id in w.ids (appended when keep is set).
void RowMerge::score_exactly(const LayerSlot& slot, int64_t i, Worker& w, bool keep) const {
  const int64_t d = s_.d;
  const float* xrow = layer_x(slot) + i * d;
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
      w.rows[q] = yl + j * d;
      w.row_scales[q] = sy[j];
    }
    if (s_.metric == Metric::SquaredL2) {
      s_.exact->sqdist_batch(xrow, w.rows.data(), count, d, w.exact.data());
    } else {
      s_.exact->dot_batch(xrow, sx, w.rows.data(), w.row_scales.data(), count, d, w.exact.data());
    }
    for (int q = 0; q < count; ++q)
      w.ranked.emplace_back(rank_key(w.exact[q], s_.metric), w.ids[first + q]);
  }
}

}  // namespace layerknn::cpu
