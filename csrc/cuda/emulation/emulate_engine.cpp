// CPU emulation of the whole CUDA k-NN engine (the real host drivers knn_cuda.cu / knn_tc.cu
// and every kernel they launch, cuBLAS included, see cublas_v2.h here), driven from Python so
// its answers can be compared bit for bit with the CPU engine's (tests/test_cuda_exact.py).
//   emulate_engine CASES OUT   with LAYERKNN_CUDA_KERNEL=fp32|tc, LAYERKNN_EMU_GEMM_ORDER=...
// CASES: a sequence of problems, each int64 [L, n, m, d, k, metric, cross, exclude_self] then
// float32 x [L, n, d] and, if cross, y [L, m, d]. OUT: per problem int32 indices [L, n, k] then
// float32 scores [L, n, k]. Prints one line per problem: the GEMM calls made and output entries
// computed, the rows the re-rank scanned exactly and the candidates of the others, and how many of
// the returned scores a plain sequential fp32 chain (the first engine's formula) would not
// reproduce bit for bit, which shows the test data tells the two formulas apart.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>

#include "common/exact_score.h"
#include "cublas_v2.h"
#include "cuda/knn_cuda.h"

namespace {

// Returned scores that a sequential fp32 FMA chain over the same operands would not give.
int64_t differs_from_chain(const layerknn::KnnProblem& p, const int32_t* idx, const float* val) {
  using namespace layerknn;
  const bool cosine = p.metric == Metric::Cosine, l2 = p.metric == Metric::SquaredL2;
  const float* y = p.y ? p.y : p.x;
  const int64_t m = p.y ? p.m : p.n;
  int64_t differ = 0;
  for (int64_t l = 0; l < p.L; ++l)
    for (int64_t i = 0; i < p.n; ++i) {
      const float* a = p.x + (l * p.n + i) * p.d;
      const float sa = exact::row_scale(exact::sq_norm(a, p.d), cosine);
      for (int c = 0; c < p.k; ++c) {
        const int64_t at = (l * p.n + i) * p.k + c;
        const float* b = y + (l * m + idx[at]) * p.d;
        const float sb = exact::row_scale(exact::sq_norm(b, p.d), cosine);
        float chain = 0.f;
        for (int64_t t = 0; t < p.d; ++t) {
          const float u = a[t] * sa, v = b[t] * sb;
          chain = l2 ? std::fmaf(u - v, u - v, chain) : std::fmaf(u, v, chain);
        }
        differ += chain != val[at];
      }
    }
  return differ;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: emulate_engine CASES OUT\n");
    return 2;
  }
  std::FILE* in = std::fopen(argv[1], "rb");
  std::FILE* out = std::fopen(argv[2], "wb");
  if (in == nullptr || out == nullptr) {
    std::fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]);
    return 2;
  }
  int64_t h[8];
  while (std::fread(h, sizeof h, 1, in) == 1) {
    layerknn::KnnProblem p;
    p.L = h[0];
    p.n = h[1];
    p.m = h[2];
    p.d = h[3];
    p.k = static_cast<int>(h[4]);
    p.metric = static_cast<layerknn::Metric>(h[5]);
    const bool cross = h[6] != 0;
    p.exclude_self = h[7] != 0;
    std::vector<float> x(p.L * p.n * p.d), y(cross ? p.L * p.m * p.d : 0);
    if (std::fread(x.data(), 4, x.size(), in) != x.size() ||
        (cross && std::fread(y.data(), 4, y.size(), in) != y.size())) {
      std::fprintf(stderr, "truncated case file\n");
      return 2;
    }
    p.x = x.data();
    p.y = cross ? y.data() : nullptr;
    std::vector<int32_t> idx(p.L * p.n * p.k, -1);
    std::vector<float> val(idx.size(), -1.f);
    emu::gemm_calls = 0;
    emu::gemm_entries = 0;
    emu::rerank_scanned = 0;
    emu::rerank_candidates = 0;
    try {
      layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
    } catch (const std::exception& e) {
      std::printf("error %s\n", e.what());
      return 1;
    }
    std::fwrite(idx.data(), 4, idx.size(), out);
    std::fwrite(val.data(), 4, val.size(), out);
    std::printf("case gemm_calls=%d gemm_entries=%lld scanned=%lld candidates=%lld differs_from_chain=%lld\n",
                emu::gemm_calls, emu::gemm_entries, emu::rerank_scanned.load(), emu::rerank_candidates.load(),
                static_cast<long long>(differs_from_chain(p, idx.data(), val.data())));
  }
  std::fclose(out);
  std::fclose(in);
  return 0;
}
