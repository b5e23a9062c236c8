// Phase 2 of the CPU k-NN engine, per query row: union the row's candidate lists, keep those
// within the window of the k-th best approximate key, re-score them with the exact fp32 score
// (knn_kernels.h) and write the k best in the one tie order (common/metric.h). A row whose list
// overflowed, or that lacks k candidates, is scanned exactly instead. Results therefore never
// depend on the tile precision, the kernel table or the thread count.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "common/metric.h"
#include "cpu/engine_state.h"
#include "cpu/knn_kernels.h"
#include "cpu/topk_candidates.h"

namespace layerknn::cpu {

class RowMerge {
 public:
  // What the merge reads and writes, fixed for one call.
  struct Setup {
    const float* x = nullptr;  // [L, n, d] queries
    const float* y = nullptr;  // [L, m, d] database rows (x in the self-join)
    int64_t n = 0, m = 0, d = 0;
    int k = 0;
    Metric metric = Metric::Cosine;
    bool self = true;                   // self-join: the database side is x
    bool exclude = true;                // self-join without j == i
    bool direct = false;                // no candidate lists: every row is scanned exactly
    const KernelSet* exact = nullptr;   // the table whose exact score defines the results
    std::vector<CandidateLists>* lists = nullptr;  // one list set per tile worker
    int32_t* indices = nullptr;         // [L, n, k] output
    float* scores = nullptr;            // [L, n, k] output
    const std::atomic<bool>* cancel = nullptr;
  };

  explicit RowMerge(const Setup& s) : s_(s) {}

  // Row i of the slot's layer from lists [first, last) (a shared layer's merge).
  void finish_row(const LayerSlot& slot, int64_t i, Worker& w, int first, int last) const;

  // Every row of a solo layer from lists `wid` alone. All lists are final here, so every row's
  // survivors are gathered first (CSR), then rows are scored in order. The exact score is
  // symmetric to the bit in the self-join (the same two fp32 operands per feature, commuted
  // products, the same lanes and tree; (a-b)^2 = (b-a)^2), and ~70% of candidate pairs are
  // mutual: when j < i already scored i, row i reuses that key instead of fetching row j (a
  // cache miss) again. Returns early (outputs incomplete) once cancel is raised.
  void finish_solo_layer(const LayerSlot& slot, Worker& w, int wid) const;

 private:
  bool collect_candidates(const LayerSlot& slot, int64_t i, Worker& w, int first, int last) const;
  void write_row(const LayerSlot& slot, int64_t i, Worker& w, bool exact_scan) const;
  void collect_all(int64_t i, Worker& w) const;
  void score_exactly(const LayerSlot& slot, int64_t i, Worker& w, bool keep = false) const;

  const RowArrays& side_y(const LayerSlot& s) const { return s_.self ? s.x : s.y; }
  const float* layer_x(const LayerSlot& s) const { return s_.x + s.layer * s_.n * s_.d; }
  const float* layer_y(const LayerSlot& s) const { return s_.y + s.layer * s_.m * s_.d; }

  Setup s_;
};

}  // namespace layerknn::cpu
