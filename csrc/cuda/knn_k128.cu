// Instantiates the fused k-NN kernels for lists of up to 128 neighbours (32 query rows per
// block, so the per-row lists fit shared memory next to the score tile). One bucket per
// translation unit keeps clean builds parallel.
#include "cuda/knn_bucket.cuh"

namespace layerknn::cuda::detail {

const BucketOps& bucket_k128() { return make_bucket<128, 32>(); }

}  // namespace layerknn::cuda::detail
