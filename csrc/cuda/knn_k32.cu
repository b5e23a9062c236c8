// Instantiates the fused k-NN kernels for lists of up to 32 neighbours (128 query rows per
// block, so the per-row lists fit shared memory next to the score tile). One bucket per
// translation unit keeps clean builds parallel.
#include "cuda/knn_bucket.cuh"

namespace layerknn::cuda::detail {

const BucketOps& bucket_k32() { return make_bucket<32, 128>(); }

}  // namespace layerknn::cuda::detail
