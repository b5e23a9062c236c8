// The CUDA engine's tensor-core candidate path (LAYERKNN_CUDA_KERNEL=tc, or auto on large
// problems): per chunk of layers, exact scales and norms (norms_kernel.cuh), rows packed to a
// 16-bit operand type with their rounding norms (pack_kernel.cuh), then per tile of query rows a
// cuBLAS GEMM (fp16/bf16 operands, fp32 accumulation, tensor cores) of approximate dot products
// against the database rows, the threshold/select kernel keeping every column within the proven
// window of the row's k-th (capacity independent of the GEMM tile; an overflowing row is scanned
// exactly), and the exact re-rank shared with the SIMT path (rerank_kernel.cuh). The self-join
// uses its symmetry: tile I computes only the blocks on and right of the diagonal (columns from
// its first row on, about half the GEMM work in all), and feeds them to the select kernel both
// as is (its own rows) and transposed (the rows below it), so each row sees every column once,
// over several segments; the select kernel's running candidate list makes the final candidates
// the same window as one pass over the whole row. The answer is the CPU engine's bit for bit,
// whatever order the GEMM sums in. Not yet done: tiles that stay in L2.
#include <cuda_runtime.h>

#include <stdexcept>

#include "cuda/knn_prepare.cuh"

#if defined(LAYERKNN_WITH_CUBLAS) || defined(LAYERKNN_CUDA_EMULATION)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "cuda/pack_kernel.cuh"

namespace layerknn::cuda::detail {

bool tensor_core_built() { return true; }

namespace {

void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS error: ") + cublasGetStatusString(status) + " in " + call);
  }
}

// One cuBLAS handle per host thread and device, created on first use and kept for the process.
cublasHandle_t cublas_handle() {
  thread_local std::map<int, cublasHandle_t> handles;
  int device = 0;
  LAYERKNN_CUDA_CHECK(cudaGetDevice(&device));
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cublasHandle_t handle = nullptr;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  handles[device] = handle;
  return handle;
}

template <class T>
void launch_pack(const float* v, const float* scale, int64_t rows, int d, void* out,
                 windows::Norms* norms, cudaStream_t stream) {
  if (rows == 0) return;
  const int64_t blocks = (rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock;
  launch_kernel(pack_rows_kernel<T>, dim3(limits::grid_extent(blocks, limits::kMaxGridX, "x")),
                dim3(kNormThreads), 0, stream, v, scale, rows, d, static_cast<T*>(out), norms);
}

// Query rows per GEMM tile: 4096, or LAYERKNN_CUDA_TC_TILE_ROWS (a positive integer; tests
// force small tiles so that small problems span several).
int64_t tc_tile_rows() {
  const char* env = std::getenv("LAYERKNN_CUDA_TC_TILE_ROWS");
  if (env == nullptr || *env == '\0') return 4096;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  if (*end != '\0' || v <= 0 || v > (int64_t{1} << 30)) {
    throw std::invalid_argument(std::string("LAYERKNN_CUDA_TC_TILE_ROWS must be a positive integer, got '") +
                                env + "'");
  }
  return v;
}

}  // namespace

void knn_tensor_core(const KnnProblem& problem, int32_t* indices, float* scores,
                     cudaStream_t stream) {
  const int64_t L = problem.L, n = problem.n, d = problem.d;
  const bool self = problem.y == nullptr;
  const float* y = self ? problem.x : problem.y;
  const int64_t m = self ? n : problem.m;
  const int k = problem.k;
  const Metric metric = problem.metric;
  const bool cosine = metric == Metric::Cosine, l2 = metric == Metric::SquaredL2;
  const bool exclude = self && problem.exclude_self;
  const int64_t valid = m - (exclude ? 1 : 0);
  // Candidate capacity per row: about 2k plus room for near-ties, independent of the tile.
  const int capacity = static_cast<int>(std::min<int64_t>(valid, 2 * int64_t{k} + 64));
  const cudaDataType_t type = cosine ? CUDA_R_16F : CUDA_R_16BF;

  int64_t chunk = std::min<int64_t>(L, limits::knn_layers_per_launch(n, m));
  int64_t tile_rows = std::min<int64_t>(n, tc_tile_rows());
  StreamBuffer temp(stream);
  size_t o_scale_x, o_scale_y, o_norm_x, o_norm_y, o_sq_x, o_sq_y, o_max, o_px, o_py, o_tile, o_cand, o_key,
      o_count;
  for (;;) {
    Carver c;
    o_scale_x = c.add<float>(chunk * n);
    o_scale_y = c.add<float>(self ? 0 : chunk * m);
    o_norm_x = c.add<windows::Norms>(chunk * n);
    o_norm_y = c.add<windows::Norms>(self ? 0 : chunk * m);
    o_sq_x = c.add<float>(l2 ? chunk * n : 0);
    o_sq_y = c.add<float>(l2 && !self ? chunk * m : 0);
    o_max = c.add<windows::Norms>(chunk);
    o_px = c.add<uint16_t>(chunk * n * d);
    o_py = c.add<uint16_t>(self ? 0 : chunk * m * d);
    o_tile = c.add<float>(chunk * tile_rows * m);
    o_cand = c.add<int32_t>(chunk * n * capacity);
    o_key = c.add<float>(chunk * n * capacity);
    o_count = c.add<int32_t>(chunk * n);
    if (temp.try_allocate(c.bytes())) break;
    if (tile_rows > 256) {
      tile_rows = (tile_rows + 1) / 2;  // smaller GEMM tiles before fewer layers
    } else if (chunk > 1) {
      chunk = (chunk + 1) / 2;
    } else {
      throw std::runtime_error("CUDA k-NN: out of device memory even for one layer's temporaries");
    }
  }
  float* scale_x = temp.as<float>(o_scale_x);
  float* scale_y = self ? scale_x : temp.as<float>(o_scale_y);
  windows::Norms* norm_x = temp.as<windows::Norms>(o_norm_x);
  windows::Norms* norm_y = self ? norm_x : temp.as<windows::Norms>(o_norm_y);
  float* sq_x = l2 ? temp.as<float>(o_sq_x) : nullptr;
  float* sq_y = l2 ? (self ? sq_x : temp.as<float>(o_sq_y)) : nullptr;
  windows::Norms* max_y = temp.as<windows::Norms>(o_max);
  void* packed_x = temp.as<void>(o_px);
  void* packed_y = self ? packed_x : temp.as<void>(o_py);
  float* tile = temp.as<float>(o_tile);
  int32_t* cand = temp.as<int32_t>(o_cand);
  float* cand_key = temp.as<float>(o_key);
  int32_t* count = temp.as<int32_t>(o_count);
  const BucketOps& bucket = bucket_for(k);
  cublasHandle_t handle = cublas_handle();
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  const float one = 1.f, zero = 0.f;
  const int di = static_cast<int>(d);

  for (int64_t l0 = 0; l0 < L; l0 += chunk) {
    const int64_t layers = std::min(chunk, L - l0);
    const float* xc = problem.x + l0 * n * d;
    const float* yc = y + l0 * m * d;
    auto prepare = [&](const float* v, int64_t rows, float* scale, windows::Norms* norms, float* sq,
                       void* packed) {
      launch_row_norms(v, rows, di, cosine, scale, norms, sq, stream);
      if (cosine) {
        launch_pack<__half>(v, scale, rows, di, packed, norms, stream);
      } else {
        launch_pack<__nv_bfloat16>(v, scale, rows, di, packed, norms, stream);
      }
    };
    prepare(xc, layers * n, scale_x, norm_x, sq_x, packed_x);
    if (!self) prepare(yc, layers * m, scale_y, norm_y, sq_y, packed_y);
    launch_layer_max(norm_y, layers, m, max_y, stream);
    LAYERKNN_CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof(int32_t) * layers * n, stream));
    SelectLaunch select;
    select.tile = tile;
    select.layers = static_cast<int>(layers);
    select.n = static_cast<int>(n);
    select.m = static_cast<int>(m);
    select.d = di;
    select.k = k;
    select.capacity = capacity;
    select.metric = metric;
    select.exclude_self = exclude;
    select.sq_x = sq_x;
    select.sq_y = sq_y;
    select.norm_x = norm_x;
    select.max_y = max_y;
    select.cand = cand;
    select.cand_key = cand_key;
    select.count = count;
    select.stream = stream;
    for (int64_t row0 = 0; row0 < n; row0 += tile_rows) {
      const int64_t rows = std::min(tile_rows, n - row0);
      // The self-join's S = X X^T is symmetric: only the blocks on and right of the diagonal,
      // columns [row0, n), are computed; rows below the tile take their columns [row0, row0 +
      // rows) from this block transposed (below). Other joins: every column.
      const int64_t col0 = self ? row0 : 0, cols = m - col0;
      // Column-major view: tile^T [cols, rows] = Y[col0:] [cols, d] . X[row0:]^T [d, rows], per layer.
      check_cublas(cublasGemmStridedBatchedEx(
                       handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(rows), di,
                       &one, static_cast<const uint16_t*>(packed_y) + col0 * d, type, di, m * d,
                       static_cast<const uint16_t*>(packed_x) + row0 * d, type, di, n * d, &zero, tile,
                       CUDA_R_32F, static_cast<int>(cols), rows * cols, static_cast<int>(layers),
                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmStridedBatchedEx");
      select.layer_stride = rows * cols;
      select.rows = static_cast<int>(rows);  // the tile's rows: columns [col0, m) as computed
      select.row_begin = row0;
      select.row_offset = 0;
      select.row_step = cols;
      select.col0 = col0;
      select.cols = static_cast<int>(cols);
      select.col_step = 1;
      bucket.select(select);
      if (!self) continue;
      // Rows j >= row0 + rows: columns [row0, row0 + rows) are this block transposed, entry
      // (t, j - row0). Using the GEMM's value for (i, j) as the key of (j, i) keeps the window
      // argument (common/score_windows.h): the bound on |GEMM dot - <a_i, a_j>| holds for any
      // summation order and is symmetric in the two rows (<x~_i - a_i, x~_j> + <a_i, x~_j - a_j>
      // either way round, charged with row j's norms against the database maxima, which dominate
      // row i's), and the squared-L2 key adds the same two fp32 squared norms; so each key a row
      // selects on is still within its window of the exact key, whichever GEMM produced it.
      select.rows = static_cast<int>(n - row0 - rows);
      select.row_begin = row0 + rows;
      select.row_offset = rows;
      select.row_step = 1;
      select.col0 = row0;
      select.cols = static_cast<int>(rows);
      select.col_step = cols;
      bucket.select(select);
    }
    RerankLaunch rerank;
    rerank.x = xc;
    rerank.y = yc;
    rerank.scale_x = scale_x;
    rerank.scale_y = scale_y;
    rerank.cand = cand;
    rerank.count = count;
    rerank.rows = layers * n;
    rerank.n = static_cast<int>(n);
    rerank.m = static_cast<int>(m);
    rerank.d = di;
    rerank.k = k;
    rerank.capacity = capacity;
    rerank.metric = metric;
    rerank.exclude_self = exclude;
    rerank.out_index = indices + l0 * n * k;
    rerank.out_score = scores + l0 * n * k;
    rerank.stream = stream;
    bucket.rerank(rerank);
  }
}

}  // namespace layerknn::cuda::detail
#else  // built without cuBLAS: the SIMT path serves every call

namespace layerknn::cuda::detail {

bool tensor_core_built() { return false; }

void knn_tensor_core(const KnnProblem&, int32_t*, float*, cudaStream_t) {
  throw std::invalid_argument(
      "LAYERKNN_CUDA_KERNEL=tc: this build of layerknn has no cuBLAS (the CUDA toolkit it was "
      "built with lacks it); unset LAYERKNN_CUDA_KERNEL or use fp32");
}

}  // namespace layerknn::cuda::detail
#endif
