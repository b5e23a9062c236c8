// Host-side launch wrappers of the fused k-NN and merge kernels for one K bucket, and the
// BucketOps table the driver dispatches through. Included only by the bucket translation units
// (knn_k32.cu ... knn_k256.cu), each instantiating one K.
#pragma once
#include <cuda_runtime.h>

#include "cuda/cuda_check.cuh"
#include "cuda/knn_kernel.cuh"
#include "cuda/knn_launch.cuh"
#include "cuda/launch.cuh"
#include "cuda/limits.h"
#include "cuda/rerank_kernel.cuh"

namespace layerknn::cuda::detail {

template <int K, int BM, Accumulate ACC>
void launch_fused(const FusedLaunch& p) {
  using Shape = FusedShape<K, BM>;
  auto kernel = fused_knn_kernel<K, BM, ACC>;
  LAYERKNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(Shape::kSmemBytes)));
  const dim3 grid((p.n + BM - 1) / BM, p.layers, p.splits);
  launch_kernel(kernel, grid, dim3(kThreads), Shape::kSmemBytes, p.stream, p.x, p.y, p.x_scale,
                p.y_scale, p.n, p.m, p.d, p.k, p.metric, p.exclude_self, p.vector_loads,
                p.tiles_per_split, p.out_index, p.out_value, p.as_scores && p.splits == 1);
}

template <int K, int BM>
void launch_fused_any(const FusedLaunch& p) {
  if (p.metric == Metric::SquaredL2) {
    launch_fused<K, BM, Accumulate::SquaredDiff>(p);
  } else {
    launch_fused<K, BM, Accumulate::Dot>(p);
  }
}

template <int K>
void launch_merge(const MergeLaunch& p) {
  const int64_t blocks = (p.rows + kWarps - 1) / kWarps;
  launch_kernel(merge_splits_kernel<K>, dim3(limits::grid_extent(blocks, limits::kMaxGridX, "x")),
                dim3(kThreads), 0, p.stream, p.part_key, p.part_index, p.rows, p.splits, p.k, p.metric,
                p.as_scores, p.out_index, p.out_score);
}

template <int K>
void launch_rerank(const RerankLaunch& p) {
  const int64_t blocks = (p.rows + kRerankWarps - 1) / kRerankWarps;
  launch_kernel(rerank_kernel<K>, dim3(limits::grid_extent(blocks, limits::kMaxGridX, "x")),
                dim3(kRerankThreads), 0, p.stream, p.x, p.y, p.scale_x, p.scale_y, p.cand, p.count,
                p.rows, p.n, p.m, p.d, p.k, p.capacity, p.metric, p.exclude_self, p.out_index,
                p.out_score);
}

template <int K>
void launch_select(const SelectLaunch& p) {
  if (p.rows <= 0) return;
  const int64_t blocks = (p.rows + kRerankWarps - 1) / kRerankWarps;
  launch_kernel(tile_select_kernel<K>,
                dim3(limits::grid_extent(blocks, limits::kMaxGridX, "x"),
                     limits::grid_extent(p.layers, limits::kMaxGridYZ, "y")),
                dim3(kRerankThreads), 0, p.stream, p.tile, p.layer_stride, p.row_offset, p.row_step,
                p.col_step, p.rows, p.row_begin, p.col0, p.cols, p.n, p.m, p.d, p.k, p.capacity,
                p.metric, p.exclude_self, p.sq_x, p.sq_y, p.norm_x, p.max_y, p.cand, p.cand_key,
                p.count);
}

template <int K, int BM>
int fused_blocks_per_sm(Metric metric) {
  using Shape = FusedShape<K, BM>;
  int blocks = 0;
  if (metric == Metric::SquaredL2) {
    auto kernel = fused_knn_kernel<K, BM, Accumulate::SquaredDiff>;
    LAYERKNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(Shape::kSmemBytes)));
    LAYERKNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads,
                                                                      Shape::kSmemBytes));
  } else {
    auto kernel = fused_knn_kernel<K, BM, Accumulate::Dot>;
    LAYERKNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(Shape::kSmemBytes)));
    LAYERKNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads,
                                                                      Shape::kSmemBytes));
  }
  return blocks < 1 ? 1 : blocks;
}

// The BucketOps table of one (K, BM) instantiation.
template <int K, int BM>
const BucketOps& make_bucket() {
  static const BucketOps ops{K, BM, &launch_fused_any<K, BM>, &launch_merge<K>,
                             &fused_blocks_per_sm<K, BM>, &launch_rerank<K>, &launch_select<K>};
  return ops;
}

}  // namespace layerknn::cuda::detail
