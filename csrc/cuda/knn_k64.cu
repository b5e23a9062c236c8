// Instantiates the fused k-NN kernels for lists of up to 64 neighbours (64 query rows per
// block, so the per-row lists fit shared memory next to the score tile). One bucket per
// translation unit keeps clean builds parallel.
#include "cuda/knn_bucket.cuh"

namespace layerknn::cuda::detail {

const BucketOps& bucket_k64() { return make_bucket<64, 64>(); }

}  // namespace layerknn::cuda::detail
