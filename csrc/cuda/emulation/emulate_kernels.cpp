// CPU emulation test of the CUDA kernels (no GPU needed): compiles the real kernel headers of
// csrc/cuda against the CUDA stand-in in this folder and checks, bit for bit, the fused k-NN
// kernel (all metrics, every K bucket, self and cross form, ties, duplicates, odd sizes,
// database splits + merge), the norm pre-kernel and the overlap kernels against plain
// sequential references that sum in the same order, and the host driver against the shared
// exact score (common/exact_score.h). Run by tests/test_cuda_emulation.py:
//   g++ -std=c++20 -O1 -pthread -U_FORTIFY_SOURCE -Icsrc/cuda/emulation -Icsrc -DLAYERKNN_CUDA_EMULATION
//       csrc/cuda/emulation/emulate_kernels.cpp -o emu && ./emu [quick]
// Race check: add -DLAYERKNN_EMU_OS_THREADS -fsanitize=thread -g (one OS thread per CUDA thread).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/knn_cuda.h"
#include "cuda/knn_kernel.cuh"
#include "cuda/limits.h"
#include "cuda/launch.cuh"
#include "cuda/norms_kernel.cuh"
#include "cuda/overlap_kernels.cuh"
#include "common/exact_score.h"
#include "common/intersect.h"

using namespace layerknn;
using namespace layerknn::cuda::detail;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

struct Case {
  int L, n, m, d, k;
  Metric metric;
  bool cross, exclude_self, ties;
  int splits;
};

// Sequential fp32 scores in the kernel's order (fmaf over features, cosine pre-scaled rows).
float ref_score(const float* xi, const float* yj, int d, Metric metric, float si, float sj) {
  float acc = 0.f;
  for (int t = 0; t < d; ++t) {
    const float a = xi[t] * si, b = yj[t] * sj;
    if (metric == Metric::SquaredL2) {
      const float diff = a - b;
      acc = fmaf(diff, diff, acc);
    } else {
      acc = fmaf(a, b, acc);
    }
  }
  return acc;
}

template <int K, int BM>
void run_fused(const Case& c, const std::vector<float>& x, const std::vector<float>& y,
               const float* xs, const float* ys, std::vector<int32_t>& idx,
               std::vector<float>& val) {
  const int m_tiles = (c.m + kTileN - 1) / kTileN;
  int splits = std::min(c.splits, m_tiles);
  const int tps = (m_tiles + splits - 1) / splits;
  splits = (m_tiles + tps - 1) / tps;
  const bool vec = c.d % 4 == 0;
  std::vector<int32_t> part_idx(static_cast<size_t>(splits) * c.L * c.n * c.k, -7);
  std::vector<float> part_val(part_idx.size(), -7.f);
  const bool l2 = c.metric == Metric::SquaredL2;
  const bool self = !c.cross;
  const float* yp = self ? x.data() : y.data();
  emu::launch(dim3((c.n + BM - 1) / BM, c.L, splits), dim3(kThreads), [&] {
    if (l2) {
      fused_knn_kernel<K, BM, Accumulate::SquaredDiff>(
          x.data(), yp, xs, ys, c.n, c.m, c.d, c.k, c.metric, self && c.exclude_self, vec, tps,
          part_idx.data(), part_val.data(), splits == 1);
    } else {
      fused_knn_kernel<K, BM, Accumulate::Dot>(
          x.data(), yp, xs, ys, c.n, c.m, c.d, c.k, c.metric, self && c.exclude_self, vec, tps,
          part_idx.data(), part_val.data(), splits == 1);
    }
  });
  if (splits == 1) {
    idx = part_idx;
    val = part_val;
    return;
  }
  idx.assign(static_cast<size_t>(c.L) * c.n * c.k, -9);
  val.assign(idx.size(), -9.f);
  const int64_t rows = static_cast<int64_t>(c.L) * c.n;
  emu::launch(dim3((rows + kWarps - 1) / kWarps), dim3(kThreads), [&] {
    merge_splits_kernel<K>(part_val.data(), part_idx.data(), rows, splits, c.k, c.metric, true,
                           idx.data(), val.data());
  });
}

// How the host driver (knn_cuda.cu) is run, when it is: device size and memory budget.
struct Driver {
  int sms;
  size_t budget;      // bytes of temporaries the emulated device can hold
  bool expect_oom;    // the budget must force at least one failed allocation (chunking)
  bool expect_splits; // the driver must split the database axis (gridDim.z > 1)
};

void run_case(const Case& c, std::mt19937& rng, const Driver* driver = nullptr) {
  const std::string name = std::string(driver ? "driver " : "") + "knn L=" + std::to_string(c.L) + " n=" + std::to_string(c.n) +
                           " m=" + std::to_string(c.m) + " d=" + std::to_string(c.d) +
                           " k=" + std::to_string(c.k) + " metric=" +
                           std::to_string(static_cast<int>(c.metric)) +
                           (c.cross ? " cross" : " self") +
                           (driver ? "" : " splits=" + std::to_string(c.splits));
  std::uniform_int_distribution<int> small(-2, 2);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](std::vector<float>& v, int rows) {
    v.resize(static_cast<size_t>(c.L) * rows * c.d);
    for (auto& e : v) e = c.ties ? static_cast<float>(small(rng)) : normal(rng);
    if (c.ties) {  // exact duplicate rows, and no all-zero rows (cosine)
      for (int l = 0; l < c.L; ++l)
        for (int r = 0; r < rows; ++r) {
          float* row = v.data() + (static_cast<size_t>(l) * rows + r) * c.d;
          if (r % 7 == 3 && r >= 3) std::copy(row - 3 * c.d, row - 2 * c.d, row);
          row[0] = 3.f;
        }
    }
  };
  std::vector<float> x, y;
  fill(x, c.n);
  if (c.cross) fill(y, c.m);
  const std::vector<float>& yv = c.cross ? y : x;

  std::vector<float> xs, ys;
  const float* xs_ptr = nullptr;
  const float* ys_ptr = nullptr;
  if (c.metric == Metric::Cosine) {
    auto norms = [&](const std::vector<float>& v, int rows, std::vector<float>& out) {
      out.assign(static_cast<size_t>(c.L) * rows, 0.f);
      const int64_t total = static_cast<int64_t>(c.L) * rows;
      std::vector<windows::Norms> nv(total);
      emu::launch(dim3((total + kNormRowsPerBlock - 1) / kNormRowsPerBlock), dim3(kNormThreads),
                  [&] { row_norms_kernel(v.data(), total, c.d, true, out.data(), nv.data(), nullptr); });
      for (int64_t r = 0; r < total; ++r) {  // the shared definition, bit for bit
        const float want = exact::row_scale(exact::sq_norm(v.data() + r * c.d, c.d), true);
        check(std::memcmp(&out[r], &want, 4) == 0, name + " row scale");
      }
    };
    norms(x, c.n, xs);
    xs_ptr = xs.data();
    if (c.cross) {
      norms(y, c.m, ys);
      ys_ptr = ys.data();
    } else {
      ys_ptr = xs_ptr;
    }
  }

  std::vector<int32_t> idx;
  std::vector<float> val;
  if (driver != nullptr) {
    KnnProblem p;
    p.x = x.data();
    p.y = c.cross ? y.data() : nullptr;
    p.L = c.L;
    p.n = c.n;
    p.m = c.m;
    p.d = c.d;
    p.k = c.k;
    p.metric = c.metric;
    p.exclude_self = c.exclude_self;
    idx.assign(static_cast<size_t>(c.L) * c.n * c.k, -5);
    val.assign(idx.size(), -5.f);
    emu::sm_count = driver->sms;
    emu::memory_budget = driver->budget;
    emu::allocation_failures = 0;
    emu::max_grid_z = 0;
    layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
    check((emu::max_grid_z > 1) == driver->expect_splits, name + ": unexpected split decision");
    check(emu::memory_in_use == 0, name + ": temporaries not freed");
    check(!driver->expect_oom || emu::allocation_failures > 0, name + ": no out-of-memory retry");
    emu::memory_budget = SIZE_MAX;
  } else if (c.k <= 32) {
    run_fused<32, 128>(c, x, y, xs_ptr, ys_ptr, idx, val);
  } else if (c.k <= 64) {
    run_fused<64, 64>(c, x, y, xs_ptr, ys_ptr, idx, val);
  } else if (c.k <= 128) {
    run_fused<128, 32>(c, x, y, xs_ptr, ys_ptr, idx, val);
  } else {
    run_fused<256, 16>(c, x, y, xs_ptr, ys_ptr, idx, val);
  }

  int bad_rows = 0;
  for (int l = 0; l < c.L; ++l) {
    for (int i = 0; i < c.n; ++i) {
      const float* xi = x.data() + (static_cast<size_t>(l) * c.n + i) * c.d;
      std::vector<std::pair<float, int32_t>> cand;
      for (int j = 0; j < c.m; ++j) {
        if (!c.cross && c.exclude_self && j == i) continue;
        const float* yj = yv.data() + (static_cast<size_t>(l) * c.m + j) * c.d;
        const float si = xs_ptr ? xs_ptr[l * c.n + i] : 1.f;
        const float sj = ys_ptr ? ys_ptr[l * c.m + j] : 1.f;
        // The fused kernel alone sums in its own order; the driver re-ranks by the exact score.
        const float score = driver ? exact::score(c.metric, xi, si, yj, sj, c.d)
                                   : ref_score(xi, yj, c.d, c.metric, si, sj);
        cand.emplace_back(rank_key(score, c.metric), j);
      }
      std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
        return ranks_before(a.first, a.second, b.first, b.second);
      });
      bool ok = true;
      for (int p = 0; p < c.k; ++p) {
        const size_t at = (static_cast<size_t>(l) * c.n + i) * c.k + p;
        const float want = rank_key(cand[p].first, c.metric);
        ok = ok && idx[at] == cand[p].second && std::memcmp(&val[at], &want, 4) == 0;
      }
      if (!ok && bad_rows++ < 3) {
        std::printf("  row l=%d i=%d: got", l, i);
        for (int p = 0; p < std::min(c.k, 8); ++p)
          std::printf(" %d:%g", idx[(static_cast<size_t>(l) * c.n + i) * c.k + p],
                      val[(static_cast<size_t>(l) * c.n + i) * c.k + p]);
        std::printf("\n  want");
        for (int p = 0; p < std::min(c.k, 8); ++p)
          std::printf(" %d:%g", cand[p].second, rank_key(cand[p].first, c.metric));
        std::printf("\n");
      }
    }
  }
  check(bad_rows == 0, name + " (" + std::to_string(bad_rows) + " rows differ)");
  std::printf("%s %s\n", bad_rows == 0 ? "ok  " : "FAIL", name.c_str());
}

void run_overlap(int La, int Lb, int n, int ka, int kb, int k, bool with_counts,
                 std::mt19937& rng, size_t driver_budget = 0) {
  std::uniform_int_distribution<int> pick(0, 3 * k);  // small range: duplicates and overlaps
  std::vector<int32_t> a(static_cast<size_t>(La) * n * ka), b(static_cast<size_t>(Lb) * n * kb);
  for (auto& v : a) v = pick(rng);
  for (auto& v : b) v = pick(rng);
  std::vector<uint16_t> counts(with_counts ? static_cast<size_t>(La) * Lb * n : 0, 9999);
  std::vector<double> mean(static_cast<size_t>(La) * Lb, -1.0);
  const double inv = 1.0 / (static_cast<double>(k) * static_cast<double>(n));
  if (driver_budget > 0) {  // through the host driver (overlap_cuda.cu), chunked by the budget
    OverlapProblem p;
    p.a = a.data();
    p.b = b.data();
    p.La = La;
    p.Lb = Lb;
    p.n = n;
    p.ka = ka;
    p.kb = kb;
    p.k = k;
    emu::memory_budget = driver_budget;
    emu::allocation_failures = 0;
    layerknn::cuda::overlap(p, mean.data(), with_counts ? counts.data() : nullptr, 0, nullptr);
    check(emu::memory_in_use == 0, "overlap driver: temporaries not freed");
    check(driver_budget == SIZE_MAX || emu::allocation_failures > 0,
          "overlap driver: no out-of-memory retry");
    emu::memory_budget = SIZE_MAX;
  } else {
  std::vector<int32_t> sa(static_cast<size_t>(La) * n * k), sb(static_cast<size_t>(Lb) * n * k);
  std::vector<uint16_t> na(static_cast<size_t>(La) * n), nb(static_cast<size_t>(Lb) * n);
  const int64_t ra = static_cast<int64_t>(La) * n, rb = static_cast<int64_t>(Lb) * n;
  // Rows staged in shared memory when they fit (as the driver launches it), else sorted in place.
  const int st = sort_rows_threads(k), tpb = st > 0 ? st : 256;
  emu::launch(dim3((ra + tpb - 1) / tpb), dim3(tpb),
              [&] { sort_rows_kernel(a.data(), ra, ka, k, sa.data(), na.data(), st > 0); });
  emu::launch(dim3((rb + tpb - 1) / tpb), dim3(tpb),
              [&] { sort_rows_kernel(b.data(), rb, kb, k, sb.data(), nb.data(), st > 0); });
  std::vector<unsigned long long> totals(static_cast<size_t>(La) * Lb, 0ull);
  emu::launch(dim3((n + kPromptsPerBlock - 1) / kPromptsPerBlock, La,
                   (Lb + kPairsPerBlock - 1) / kPairsPerBlock),
              dim3(kPromptsPerBlock), [&] {
                overlap_pairs_kernel(sa.data(), na.data(), sb.data(), nb.data(), n, k, Lb,
                                     totals.data(), with_counts ? counts.data() : nullptr, 0, 0,
                                     Lb);
              });
  emu::launch(dim3((La * Lb + 255) / 256), dim3(256), [&] {
    overlap_mean_kernel(totals.data(), La, Lb, inv, mean.data(), 0, 0, Lb);
  });
  }
  // Reference: std::sort + std::unique + std::set_intersection (independent of intersect.h).
  int bad = 0;
  for (int la = 0; la < La; ++la)
    for (int lb = 0; lb < Lb; ++lb) {
      long long total = 0;
      for (int i = 0; i < n; ++i) {
        std::vector<int32_t> ra_(a.begin() + (static_cast<size_t>(la) * n + i) * ka,
                                 a.begin() + (static_cast<size_t>(la) * n + i) * ka + k);
        std::vector<int32_t> rb_(b.begin() + (static_cast<size_t>(lb) * n + i) * kb,
                                 b.begin() + (static_cast<size_t>(lb) * n + i) * kb + k);
        std::sort(ra_.begin(), ra_.end());
        ra_.erase(std::unique(ra_.begin(), ra_.end()), ra_.end());
        std::sort(rb_.begin(), rb_.end());
        rb_.erase(std::unique(rb_.begin(), rb_.end()), rb_.end());
        std::vector<int32_t> both;
        std::set_intersection(ra_.begin(), ra_.end(), rb_.begin(), rb_.end(),
                              std::back_inserter(both));
        total += static_cast<long long>(both.size());
        if (with_counts && counts[(static_cast<size_t>(la) * Lb + lb) * n + i] != both.size()) ++bad;
      }
      if (mean[static_cast<size_t>(la) * Lb + lb] != static_cast<double>(total) * inv) ++bad;
    }
  const std::string name = std::string(driver_budget ? "driver " : "") + "overlap La=" + std::to_string(La) + " Lb=" + std::to_string(Lb) +
                           " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                           (with_counts ? " counts" : "");
  check(bad == 0, name);
  std::printf("%s %s\n", bad == 0 ? "ok  " : "FAIL", name.c_str());
}


// Throws-check helper: true when f() throws E whose message contains `needle`.
template <class E, class F>
bool throws_with(F f, const std::string& needle) {
  try {
    f();
  } catch (const E& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return true;
    std::printf("  unexpected message: %s\n", e.what());
  }
  return false;
}

// The launch plumbing of the drivers: LAYERKNN_CUDA_SYNC, fault reporting at the call, the
// plain-malloc fallback of the temporaries, and the size limits checked before any launch.
void run_plumbing(std::mt19937& rng) {
  const int before = failures;
  std::vector<float> x(2 * 150 * 12);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  std::vector<int32_t> idx(2 * 150 * 6);
  std::vector<float> val(idx.size());
  KnnProblem p;
  p.x = x.data();
  p.L = 2;
  p.n = 150;
  p.d = 12;
  p.k = 6;
  p.metric = Metric::Cosine;
  emu::sm_count = 4;  // database splits: norms, fused and merge kernels all launch
  const auto counters_reset = [] {
    emu::launches = emu::synchronizations = emu::async_allocations = emu::plain_allocations = 0;
  };

  // LAYERKNN_CUDA_SYNC=1: one stream synchronisation per launch plus one closing the call.
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::launches >= 3 && emu::synchronizations == 0, "no synchronisation without LAYERKNN_CUDA_SYNC");
  const std::vector<int32_t> expect = idx;
  setenv("LAYERKNN_CUDA_SYNC", "1", 1);
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::synchronizations == emu::launches + 1, "LAYERKNN_CUDA_SYNC=1 synchronises every launch");
  check(idx == expect, "LAYERKNN_CUDA_SYNC=1 gives the same result");
  setenv("LAYERKNN_CUDA_SYNC", "0", 1);
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::synchronizations == 0, "LAYERKNN_CUDA_SYNC=0 does not synchronise");
  unsetenv("LAYERKNN_CUDA_SYNC");

  // A faulting kernel is reported at the layerknn call, and the temporaries are still freed.
  for (int at = 1; at <= 3; ++at) {
    counters_reset();
    emu::fault_at_launch = at;
    check(throws_with<std::runtime_error>([&] { layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr); },
                                          "illegal memory access"),
          "a fault at launch " + std::to_string(at) + " raises at the call");
    check(emu::memory_in_use == 0, "temporaries freed after a fault");
  }
  emu::fault_at_launch = 0;
  counters_reset();
  emu::pending_error = cudaErrorIllegalAddress;  // recorded by an earlier, unchecked launch
  const int32_t a_rows[6] = {1, 2, 3, 4, 5, 6};
  OverlapProblem o;
  o.a = a_rows;
  o.b = a_rows;
  o.La = o.Lb = 1;
  o.n = 2;
  o.ka = o.kb = 3;
  o.k = 3;
  double mean = 0;
  check(throws_with<std::runtime_error>([&] { layerknn::cuda::overlap(o, &mean, nullptr, 0, nullptr); },
                                        "cudaErrorIllegalAddress"),
        "a pending fault surfaces at the overlap call");
  layerknn::cuda::overlap(o, &mean, nullptr, 0, nullptr);
  check(mean == 1.0, "overlap after a cleared fault");

  // Temporaries without a stream-ordered pool: plain cudaMalloc, same answer.
  emu::malloc_async_error = cudaErrorNotSupported;
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::async_allocations == 0 && emu::plain_allocations > 0 && idx == expect,
        "cudaMallocAsync unsupported: falls back to cudaMalloc");
  emu::malloc_async_error = cudaSuccess;
  emu::memory_pools = false;
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::async_allocations == 0 && emu::plain_allocations > 0 && idx == expect,
        "no memory pools: cudaMalloc");
  emu::memory_pools = true;
  setenv("LAYERKNN_CUDA_POOL", "0", 1);
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::async_allocations == 0 && emu::plain_allocations > 0, "LAYERKNN_CUDA_POOL=0: cudaMalloc");
  unsetenv("LAYERKNN_CUDA_POOL");
  counters_reset();
  layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
  check(emu::async_allocations > 0 && emu::plain_allocations == 0, "pool used by default");
  check(emu::memory_in_use == 0, "temporaries freed");

  // Size limits, refused before any launch or allocation.
  namespace lim = layerknn::cuda::limits;
  counters_reset();
  KnnProblem big = p;
  big.n = lim::kMaxExtent + 1;
  check(throws_with<std::invalid_argument>([&] { layerknn::cuda::knn(big, nullptr, nullptr, 0, nullptr); },
                                           "n (query rows) must be at most 2147483391"),
        "n beyond the 32-bit row limit");
  big = p;
  big.d = int64_t{1} << 32;
  check(throws_with<std::invalid_argument>([&] { layerknn::cuda::knn(big, nullptr, nullptr, 0, nullptr); },
                                           "d (features)"),
        "d beyond the 32-bit feature limit");
  big = p;
  big.y = x.data();
  big.m = int64_t{3} << 31;
  check(throws_with<std::invalid_argument>([&] { layerknn::cuda::knn(big, nullptr, nullptr, 0, nullptr); },
                                           "m (database rows)"),
        "m beyond the 32-bit row limit");
  check(emu::launches == 0 && emu::async_allocations == 0, "limits checked before any launch");
  check(lim::knn_layers_per_launch(150, 150) == 65535 && lim::knn_layers_per_launch(1, 1) == 65535,
        "layers per launch: grid y limit");
  check(lim::knn_layers_per_launch(lim::kMaxExtent, 5) == 8, "layers per launch: grid x of the norms");
  check(lim::overlap_layers_per_launch(int64_t{1} << 35) == 15, "overlap layers per launch");
  check(throws_with<std::invalid_argument>([] { lim::check_overlap(1, 1, int64_t{1} << 40, 5, 5, 5); },
                                           "n (prompts) must be at most"),
        "overlap n beyond the grid limit");
  check(throws_with<std::invalid_argument>([] { lim::check_overlap(1, 1, 10, 5, 7, 6); }, "[1, 5], got 6"),
        "overlap k beyond min(ka, kb)");
  check(throws_with<std::invalid_argument>([] { lim::grid_extent(int64_t{1} << 31, lim::kMaxGridX, "x"); },
                                           "grid x of 2147483648 blocks"),
        "grid extent beyond the limit");
  check(throws_with<std::logic_error>([] { check_launch_shape(dim3(1, 70000, 1), dim3(256)); },
                                      "invalid launch shape"),
        "launch shape check");
  std::printf("%s launch plumbing (sync flag, faults, malloc fallback, limits)\n",
              failures == before ? "ok  " : "FAIL");
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  std::mt19937 rng(12345);
  const Metric IP = Metric::InnerProduct, COS = Metric::Cosine, L2 = Metric::SquaredL2;
  std::vector<Case> cases = {
      // L, n, m, d, k, metric, cross, exclude_self, ties, splits
      {2, 150, 150, 37, 5, COS, false, true, false, 1},    // scalar loads, 2 row blocks
      {1, 150, 150, 40, 10, IP, false, true, true, 1},     // vector loads, exact ties
      {1, 131, 131, 16, 7, L2, false, true, true, 1},      // L2 ties, n just over a tile
      {1, 60, 140, 5, 32, IP, true, false, true, 1},       // cross form, bucket edge k=32
      {1, 70, 70, 3, 33, L2, false, true, true, 1},        // k=33 -> K=64 bucket
      {1, 40, 40, 9, 39, COS, false, true, false, 1},      // k = n-1
      {1, 5, 5, 2, 1, IP, false, true, true, 1},           // tiny, k=1
      {1, 20, 20, 4, 20, IP, false, false, true, 1},       // self-join keeping self, k = m
      {1, 33, 300, 8, 130, IP, true, false, true, 1},      // K=256 bucket, 3 database tiles
      {1, 50, 300, 12, 100, COS, true, false, false, 1},   // K=128 bucket
      {2, 300, 300, 8, 10, IP, false, true, true, 3},      // splits + merge (self, uneven tiles)
      {1, 40, 400, 6, 70, L2, true, false, true, 2},       // splits + merge, K=128
      {1, 17, 260, 3, 256, IP, true, false, true, 3},      // largest k, splits
  };
  // "quick": one case per K bucket / load path / metric, plus the split + merge path.
  const std::vector<size_t> quick_set = {0, 3, 4, 5, 12};
  for (size_t i = 0; i < cases.size(); ++i) {
    if (!quick || std::find(quick_set.begin(), quick_set.end(), i) != quick_set.end()) {
      run_case(cases[i], rng);
    }
  }
  run_overlap(quick ? 1 : 3, 2, 300, 10, 12, 10, true, rng);
  run_overlap(quick ? 1 : 2, 35, 40, 5, 5, 5, false, rng);  // two B groups per block
  run_overlap(1, 1, 7, 3, 4, 1, true, rng);
  run_overlap(1, 2, 150, 120, 110, 100, true, rng);  // staged rows, 96 threads a block
  run_overlap(1, 1, 400, 390, 395, 390, true, rng);  // k > 384: sorted in place, unstaged

  // The host drivers: database splits chosen for a 4-SM device, layer chunking forced by a
  // small memory budget, temporaries freed, and the argument errors.
  const Driver roomy{4, SIZE_MAX, false, true};
  run_case({2, 150, 150, 37, 5, COS, false, true, false, 1}, rng, &roomy);     // splits via driver
  run_case({1, 20, 700, 8, 40, L2, true, false, true, 1}, rng, &roomy);        // cross, K=64, splits
  const Driver tight{4, 100000, true, false};  // ~2 layers of norms, lists and counts
  run_case({5, 150, 150, 12, 6, COS, false, true, false, 1}, rng, &tight);     // layer chunks
  const Driver no_split{1, 100000, true, false};  // 3 layers fit only without splits
  run_case({3, 100, 150, 8, 9, COS, true, false, true, 1}, rng, &no_split);
  run_overlap(5, 7, 60, 6, 5, 5, true, rng, SIZE_MAX);
  run_overlap(5, 7, 60, 6, 5, 5, true, rng, 3 * 60 * 5 * 4 + 3 * 60 * 2 + 4096);  // chunks of A, B
  {
    std::vector<float> x(3 * 300 * 4, 1.f);
    std::vector<int32_t> idx(3 * 300 * 257);
    std::vector<float> val(idx.size());
    KnnProblem p;
    p.x = x.data();
    p.L = 3;
    p.n = 300;
    p.d = 4;
    p.k = 257;
    bool threw = false;
    try {
      layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
    } catch (const std::invalid_argument& e) {
      threw = std::string(e.what()).find("at most 256") != std::string::npos;
    }
    check(threw, "k > max_k raises invalid_argument naming the limit");
    p.k = 300;  // > n - 1 with exclude_self
    threw = false;
    try {
      layerknn::cuda::knn(p, idx.data(), val.data(), 0, nullptr);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    check(threw, "k > n - 1 raises invalid_argument");
    std::string why;
    check(layerknn::cuda::device_count(&why) == 1 && layerknn::cuda::max_k() == 256,
          "device_count / max_k");
    std::printf("%s driver argument errors\n", failures == 0 ? "ok  " : "FAIL");
  }
  run_plumbing(rng);
  std::printf(failures == 0 ? "ALL OK\n" : "%d FAILURES\n", failures);
  return failures == 0 ? 0 : 1;
}
