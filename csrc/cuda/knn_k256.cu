// Instantiates the fused k-NN kernels for lists of up to 256 neighbours (16 query rows per
// block, so the per-row lists fit shared memory next to the score tile). One bucket per
// translation unit keeps clean builds parallel.
#include "cuda/knn_bucket.cuh"

namespace layerknn::cuda::detail {

const BucketOps& bucket_k256() { return make_bucket<256, 16>(); }

}  // namespace layerknn::cuda::detail
