// Per-row candidate lists of the CPU k-NN engine: for every row, the database rows whose
// approximate key may still belong to its exact top k. A list keeps every candidate whose key is
// >= (its k-th best key) - window, where `window` bounds twice the error of an approximate key;
// the k-th best key is tracked exactly (a sorted array for k <= 16, else a min-heap), and the
// published threshold only rises, so SIMD scans can test against a stale value safely. A list that cannot shrink below
// 3/4 of its capacity gives up ("overflowed"): the engine recomputes that row exactly, so
// correctness never depends on the capacity.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace layerknn::cpu {

// Largest float <= a - b (rounded towards -infinity), so thresholds never exclude too much.
inline float lower_difference(float a, float b) {
  float f = a - b;
  if (!(std::fabs(f) < INFINITY)) return std::nextafter(f, -INFINITY);  // inf, nan
  if (f == 0.f) return -std::numeric_limits<float>::denorm_min();
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits = f > 0.f ? bits - 1 : bits + 1;  // one ulp towards -infinity
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// One candidate: its approximate key and its database row (kept together: one cache line
// touched per insert).
struct Candidate {
  float key;
  int32_t id;
};

class CandidateLists {
 public:
  // Up to this k the k best keys are a descending array of kSortedK floats per row (padded with
  // -inf), which SIMD code can update branch-free (see simd_avx512.cpp); above it, a min-heap.
  static constexpr int kSortedK = 16;

  CandidateLists(int64_t rows, int capacity, int k)
      : capacity_(capacity),
        k_(k),
        threshold_(rows, -INFINITY),
        count_(rows, 0),
        heap_size_(rows, 0),
        overflowed_(rows, 0),
        heap_(rows * (k <= kSortedK ? kSortedK : k), -INFINITY),
        entries_(rows * capacity) {}

  float* thresholds() { return threshold_.data(); }  // [rows]

  // Adds (key, id) to row's list if it can still matter. window = 2 x key error bound (>= 0).
  void insert(int64_t row, float key, int32_t id, float window) {
    if (!(key >= threshold_[row])) return;
    if (sorted_mode()) {
      push_sorted(row, key, window);
    } else {
      push_key(row, key, window);
    }
    append(row, key, id);
  }

  // The pieces of insert() for callers that track the best keys themselves (sorted mode).
  bool sorted_mode() const { return k_ <= kSortedK; }
  int k() const { return k_; }
  float* best_keys(int64_t row) { return heap_.data() + row * kSortedK; }  // [kSortedK]
  int32_t& best_count(int64_t row) { return heap_size_[row]; }
  // Raises the threshold to kth - window (rounded down); never lowers it.
  void raise_threshold(int64_t row, float kth, float window) {
    threshold_[row] = std::max(threshold_[row], lower_difference(kth, window));
  }
  // Stores (key, id) if still >= the threshold, compacting or overflowing a full list.
  void append(int64_t row, float key, int32_t id) {
    int n = count_[row];
    if (n == capacity_) {
      n = compact(row);
      if (n * 4 > capacity_ * 3) {  // no room gained: give up on this row (exact fallback)
        overflowed_[row] = 1;
        threshold_[row] = INFINITY;
        count_[row] = 0;
        return;
      }
    }
    if (!(key >= threshold_[row])) return;
    entries_[row * capacity_ + n] = {key, id};
    count_[row] = n + 1;
  }

  int count(int64_t row) const { return count_[row]; }
  bool overflowed(int64_t row) const { return overflowed_[row] != 0; }
  const Candidate* entries(int64_t row) const { return entries_.data() + row * capacity_; }

  // Empties a row for the next layer.
  void reset(int64_t row) {
    threshold_[row] = -INFINITY;
    count_[row] = 0;
    heap_size_[row] = 0;
    overflowed_[row] = 0;
    if (sorted_mode()) std::fill_n(best_keys(row), kSortedK, -INFINITY);
  }

 private:
  // Sorted mode: inserts key into the descending array of the k best (scalar version).
  void push_sorted(int64_t row, float key, float window) {
    float* best = best_keys(row);
    int size = heap_size_[row];
    if (size == k_ && !(key > best[k_ - 1])) return;
    int pos = size < k_ ? size : k_ - 1;
    while (pos > 0 && best[pos - 1] < key) {
      best[pos] = best[pos - 1];
      --pos;
    }
    best[pos] = key;
    if (size < k_) heap_size_[row] = ++size;
    if (size == k_) raise_threshold(row, best[k_ - 1], window);
  }

  // Tracks the k best keys seen in a min-heap; once it holds k, the threshold is
  // (k-th best key) - window, rounded down.
  void push_key(int64_t row, float key, float window) {
    float* heap = heap_.data() + row * k_;
    int size = heap_size_[row];
    if (size < k_) {
      int c = size++;
      while (c > 0 && heap[(c - 1) / 2] > key) {
        heap[c] = heap[(c - 1) / 2];
        c = (c - 1) / 2;
      }
      heap[c] = key;
      heap_size_[row] = size;
      if (size < k_) return;
    } else {
      if (!(key > heap[0])) return;
      int c = 0;
      for (;;) {
        int child = 2 * c + 1;
        if (child >= k_) break;
        if (child + 1 < k_ && heap[child + 1] < heap[child]) ++child;
        if (!(heap[child] < key)) break;
        heap[c] = heap[child];
        c = child;
      }
      heap[c] = key;
    }
    raise_threshold(row, heap[0], window);
  }

  // Drops the candidates that fell below the threshold; returns how many remain.
  int compact(int64_t row) {
    Candidate* entries = entries_.data() + row * capacity_;
    const float threshold = threshold_[row];
    int kept = 0;
    for (int c = 0; c < count_[row]; ++c) {
      if (entries[c].key >= threshold) entries[kept++] = entries[c];
    }
    count_[row] = kept;
    return kept;
  }

  int capacity_;
  int k_;
  std::vector<float> threshold_;
  std::vector<int32_t> count_, heap_size_;
  std::vector<uint8_t> overflowed_;
  std::vector<float> heap_;
  std::vector<Candidate> entries_;  // [rows, capacity]
};

}  // namespace layerknn::cpu
