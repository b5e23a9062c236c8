// Per-prompt neighbourhood scores, one pure function per measure of layerknn.overlap(measure=):
// they see one prompt's two neighbour rows (best first) and nothing else, so each can be checked
// on its own. Set measures read a row as "sorted keys": its distinct ids ascending, each with the
// column where it first appears (see sort_row_keys). The engine around them (overlap_measures.cpp)
// only schedules; every formula lives here. All scores are numerators: see each function for the
// denominator that maps it to [0, 1].
#pragma once
#include <algorithm>
#include <cstdint>

namespace layerknn::cpu::measures {

// Sort key of one neighbour: the id in the high 32 bits, its column in the low 32 bits, so keys
// sort by id and then by column. Ids are >= 0 (checked by the Python layer).
inline uint64_t make_key(int32_t id, int column) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(id)) << 32) | static_cast<uint32_t>(column);
}
inline int32_t key_id(uint64_t key) { return static_cast<int32_t>(key >> 32); }
inline int key_column(uint64_t key) { return static_cast<int>(key & 0xffffffffu); }

// Writes the distinct ids of row[0 .. k) to keys[0 .. m) ascending, each with its first column,
// and returns m (<= k). Insertion sort for short rows (the usual k), std::sort beyond.
inline int sort_row_keys(const int32_t* row,  // [k] neighbour ids, best first
                         int k,
                         uint64_t* keys) {    // [k] out: sorted distinct keys
  for (int c = 0; c < k; ++c) keys[c] = make_key(row[c], c);
  if (k <= 32) {
    for (int c = 1; c < k; ++c) {
      const uint64_t x = keys[c];
      int j = c - 1;
      while (j >= 0 && keys[j] > x) {
        keys[j + 1] = keys[j];
        --j;
      }
      keys[j + 1] = x;
    }
  } else {
    std::sort(keys, keys + k);
  }
  int m = 0;
  for (int c = 0; c < k; ++c) {  // the first key of each id run has the smallest column
    if (m == 0 || key_id(keys[c]) != key_id(keys[m - 1])) keys[m++] = keys[c];
  }
  return m;
}

// |A ∩ B| of two sorted distinct key lists (mutual: divide by k).
inline int shared_ids(const uint64_t* a, int na, const uint64_t* b, int nb) {
  int i = 0, j = 0, count = 0;
  while (i < na && j < nb) {
    const int32_t va = key_id(a[i]), vb = key_id(b[j]);
    count += (va == vb);
    i += (va <= vb);
    j += (vb <= va);
  }
  return count;
}

// Jaccard index |A ∩ B| / |A ∪ B| of the two rows' id sets, already in [0, 1]. With no repeated
// id in a row this is c / (2k - c) for c = |A ∩ B|.
inline double jaccard(const uint64_t* a, int na, const uint64_t* b, int nb) {
  const int c = shared_ids(a, na, b, nb);
  return static_cast<double>(c) / static_cast<double>(na + nb - c);
}

// Average overlap over depths: sum over d = 1..k of |A_d ∩ B_d| / d, where A_d is the set of the
// first d ids of the row (divide by k for [0, 1]). An id shared by both rows is in A_d ∩ B_d
// exactly for d > max(first column in A, first column in B), so the depth counts come from one
// merge and a histogram. depth_hits must hold k zeros; it is left zeroed.
inline double rank_overlap(const uint64_t* a, int na, const uint64_t* b, int nb, int k,
                           int32_t* depth_hits) {  // [k] scratch, zero on entry and exit
  int i = 0, j = 0, first_depth = k;
  while (i < na && j < nb) {
    const int32_t va = key_id(a[i]), vb = key_id(b[j]);
    if (va == vb) {
      const int deepest = std::max(key_column(a[i]), key_column(b[j]));
      ++depth_hits[deepest];
      first_depth = std::min(first_depth, deepest);
    }
    i += (va <= vb);
    j += (vb <= va);
  }
  double sum = 0.0;
  int shared = 0;
  for (int d = first_depth; d < k; ++d) {  // columns 0..d are the first d + 1 ids
    shared += depth_hits[d];
    depth_hits[d] = 0;
    sum += static_cast<double>(shared) / static_cast<double>(d + 1);
  }
  return sum;
}

// Cycle k-NN hit: 1 when some id of B's row (sorted keys of prompt i) also lists i among its own
// A neighbours, i.e. when i is in the A-neighbourhood of one of its B-neighbours; else 0.
// `sources` are the prompts whose A row lists i, ascending (duplicates allowed).
inline int cycle_hit(const uint64_t* b, int nb,
                     const int32_t* sources, int64_t num_sources) {  // [num_sources] ascending
  int j = 0;
  int64_t s = 0;
  while (j < nb && s < num_sources) {
    const int32_t vb = key_id(b[j]), vs = sources[s];
    if (vb == vs) return 1;
    j += (vb < vs);
    s += (vs < vb);
  }
  return 0;
}

// Length of the longest common subsequence of x[0 .. k) and y[0 .. k) (divide by k for [0, 1]).
// Classic dynamic programme over one rolling row.
inline int lcs_length(const int32_t* x, const int32_t* y, int k,
                      int32_t* row) {  // [k + 1] scratch
  std::fill(row, row + k + 1, 0);
  for (int i = 0; i < k; ++i) {
    int32_t diagonal = 0;  // row[j] of the previous i, before it was overwritten
    const int32_t xi = x[i];
    for (int j = 1; j <= k; ++j) {
      const int32_t up = row[j];
      row[j] = (xi == y[j - 1]) ? diagonal + 1 : std::max(up, row[j - 1]);
      diagonal = up;
    }
  }
  return row[k];
}

// Levenshtein distance (insertions, deletions and substitutions, each cost 1) between x[0 .. k)
// and y[0 .. k); at most k, so k - distance is the numerator of a [0, 1] score (divide by k).
inline int edit_distance(const int32_t* x, const int32_t* y, int k,
                         int32_t* row) {  // [k + 1] scratch
  for (int j = 0; j <= k; ++j) row[j] = j;
  for (int i = 1; i <= k; ++i) {
    int32_t diagonal = row[0];
    row[0] = i;
    const int32_t xi = x[i - 1];
    for (int j = 1; j <= k; ++j) {
      const int32_t up = row[j];
      row[j] = std::min(std::min(up, row[j - 1]) + 1, diagonal + (xi != y[j - 1] ? 1 : 0));
      diagonal = up;
    }
  }
  return row[k];
}

}  // namespace layerknn::cpu::measures
