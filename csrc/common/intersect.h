// Size of the intersection of two ascending, duplicate-free int32 lists, by a branch-light
// merge. Used by the overlap kernels of both backends after each neighbour row has been sorted
// once; k is small (typically 10..256) so a linear merge beats hashing or bitsets.
#pragma once
#include "common/hd.h"

namespace layerknn {

LAYERKNN_HD int sorted_intersection_size(const int32_t* a, int na, const int32_t* b, int nb) {
  int i = 0, j = 0, count = 0;
  while (i < na && j < nb) {
    const int32_t va = a[i], vb = b[j];
    count += (va == vb);
    i += (va <= vb);
    j += (vb <= va);
  }
  return count;
}

// Sorts a short list ascending in place (insertion sort; k is small) and removes duplicates.
// Element c lives at v[c * stride] (stride > 1: a row interleaved with other threads' rows in
// GPU shared memory, so neighbouring threads touch neighbouring banks). Returns the number of
// distinct values kept at the front.
LAYERKNN_HD int sort_unique_small(int32_t* v, int len, int stride = 1) {
  for (int i = 1; i < len; ++i) {
    const int32_t x = v[i * stride];
    int j = i - 1;
    while (j >= 0 && v[j * stride] > x) {
      v[(j + 1) * stride] = v[j * stride];
      --j;
    }
    v[(j + 1) * stride] = x;
  }
  int out = 0;
  for (int i = 0; i < len; ++i) {
    if (out == 0 || v[i * stride] != v[(out - 1) * stride]) v[(out++) * stride] = v[i * stride];
  }
  return out;
}

}  // namespace layerknn
