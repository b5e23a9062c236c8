// Per-prompt neighbourhood scores, one pure function per measure of layerknn.overlap(measure=):
// each sees one prompt's two neighbour rows (best first) and nothing else, so it can be checked on
// its own. The A row is read through a RowLookup (id -> first column, column mask) built once and
// probed by every B row; set measures read the B row as "sorted keys" (distinct ids with their
// first column, see sort_row_keys). The engine around them (overlap_measures.cpp) only schedules.
// All scores are numerators: see each function for the denominator that maps it to [0, 1].
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

// Lookup of one A row, built once per (A layer, prompt) and probed by every B row of that
// prompt: for an id of the row, its first column and the bit mask of all its columns. (Cycle
// builds it from a list of prompts instead of a row.)
struct RowLookup {
  const int32_t* stamp;   // [ids] equals `pass` for ids in the row
  const int32_t* first;   // [ids] first column of the id in the row
  const uint64_t* mask;   // [ids] bit c set when column c holds the id (rows of k <= 64), or nullptr
  int32_t pass;
  int64_t ids;            // table size: ids >= this are not in the row

  bool has(int32_t id) const {
    return static_cast<uint64_t>(static_cast<uint32_t>(id)) < static_cast<uint64_t>(ids) && stamp[id] == pass;
  }
};

// Shared ids of the A row (lookup) and B's sorted distinct keys. For each one, counts depth
// max(first column in A, first column in B) in depth_hits when given. Returns |A ∩ B|.
inline int shared_ids(const RowLookup& a, const uint64_t* b, int nb,
                      int32_t* depth_hits) {  // [k] or nullptr
  int count = 0;
  for (int j = 0; j < nb; ++j) {
    const int32_t id = key_id(b[j]);
    if (!a.has(id)) continue;
    ++count;
    if (depth_hits) ++depth_hits[std::max(a.first[id], key_column(b[j]))];
  }
  return count;
}

// Jaccard index |A ∩ B| / |A ∪ B| of two id sets with na and nb distinct ids, c shared; already in
// [0, 1]. With no repeated id in a row this is c / (2k - c).
inline double jaccard(int c, int na, int nb) {
  return static_cast<double>(c) / static_cast<double>(na + nb - c);
}

// Average overlap over depths: sum over d = 1..k of |A_d ∩ B_d| / d, where A_d is the set of the
// first d ids of the row (divide by k for [0, 1]). An id shared by both rows is in A_d ∩ B_d
// exactly for d > max(first column in A, first column in B): depth_hits[m] counts the shared ids
// of depth m (from shared_ids). Leaves depth_hits zeroed.
inline double rank_overlap(int32_t* depth_hits, int k) {  // [k] in: depth counts; out: zeros
  double sum = 0.0;
  int shared = 0;
  for (int d = 0; d < k; ++d) {  // columns 0..d are the first d + 1 ids
    if (depth_hits[d] == 0 && shared == 0) continue;
    shared += depth_hits[d];
    depth_hits[d] = 0;
    sum += static_cast<double>(shared) / static_cast<double>(d + 1);
  }
  return sum;
}

// For rows of k <= 64: match[j] = bit mask of the columns of x that hold y[j] (from x's lookup).
inline void match_masks(const RowLookup& x, const int32_t* y, int k,
                        uint64_t* match) {  // [k] out
  for (int j = 0; j < k; ++j) match[j] = x.has(y[j]) ? x.mask[y[j]] : 0;
}

// Bit-parallel LCS length (Allison-Dix / Hyyro) of x and y of length k <= 64, from the match
// masks of y's ids over x's columns: V holds a 0 bit for every column of x matched so far.
inline int lcs_length_bits(const uint64_t* match, int k) {  // [k] masks over x's columns
  uint64_t v = ~uint64_t{0};
  for (int j = 0; j < k; ++j) {
    const uint64_t u = v & match[j];
    v = (v + u) | (v - u);
  }
  const uint64_t low = k == 64 ? ~uint64_t{0} : (uint64_t{1} << k) - 1;
  return k - __builtin_popcountll(v & low);
}

// Bit-parallel Levenshtein distance (Myers 1999, global form as in Hyyro 2001) of x and y of
// length k <= 64, from the match masks of y's ids over x's columns. Pv / Mv are the +1 / -1
// vertical differences of the DP column; the top row D[0][j] = j shifts a +1 into Ph.
inline int edit_distance_bits(const uint64_t* match, int k) {  // [k] masks over x's columns
  uint64_t pv = ~uint64_t{0}, mv = 0;
  const uint64_t top = uint64_t{1} << (k - 1);
  int score = k;
  for (int j = 0; j < k; ++j) {
    const uint64_t eq = match[j];
    const uint64_t xv = eq | mv;
    const uint64_t xh = (((eq & pv) + pv) ^ pv) | eq;
    uint64_t ph = mv | ~(xh | pv);
    uint64_t mh = pv & xh;
    score += (ph & top) ? 1 : ((mh & top) ? -1 : 0);
    ph = (ph << 1) | 1;
    mh <<= 1;
    pv = mh | ~(xv | ph);
    mv = ph & xv;
  }
  return score;
}

// Cycle k-NN hit: 1 when some id of B's row for prompt i (b[0 .. k)) lists i among its own A
// neighbours, i.e. when i is in the A-neighbourhood of one of its B-neighbours; else 0. The
// lookup holds the prompts whose A row lists i (the reverse k-NN list of i).
inline int cycle_hit(const RowLookup& listing_i, const int32_t* b, int k) {  // b [k]
  for (int j = 0; j < k; ++j) {
    if (listing_i.has(b[j])) return 1;
  }
  return 0;
}

// Length of the longest common subsequence of x[0 .. k) and y[0 .. k) (divide by k for [0, 1]).
// Classic dynamic programme over one rolling row: the definition, and the path for k > 64.
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
// Dynamic programme over one rolling row: the definition, and the path for k > 64.
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
