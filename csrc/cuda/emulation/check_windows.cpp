// Tries to break the candidate windows of common/score_windows.h (no GPU, no engine): on
// Gaussian rows, rows with a few massive features, all-positive rows (every rounding error in
// one direction), rows whose elements sit near half an fp16/bf16 ulp, and rows deep in fp16's
// subnormal range, it measures |approximate - exact| for the SIMT chain, the exact score and the
// emulated GEMM (fp16 and bf16 operands; fp32 sums sequential, reversed, pairwise, blocked,
// random and truncated towards zero) against a reference exact to ~2^-100, and checks each
// error is within its bound. It also checks the adversary has teeth (a bound a fifth as wide is
// broken somewhere) and that threshold_below never rounds up. Run by tests/test_cuda_exact.py:
//   g++ -std=c++20 -O1 -Icsrc/cuda/emulation -Icsrc -DLAYERKNN_CUDA_EMULATION check_windows.cpp
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cublas_v2.h"
#include "common/exact_score.h"
#include "common/score_windows.h"

using namespace layerknn;

namespace {

int failures = 0;
double worst_ratio = 0.;  // largest error / bound seen (must stay <= 1; should come close)
bool quiet = false;       // the teeth run expects failures: count them, print nothing

// sum of a[t] * b[t], exact products (double), error-free two-sum accumulation.
double reference_dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0., c = 0.;
  for (size_t t = 0; t < a.size(); ++t) {
    const double p = double(a[t]) * double(b[t]);
    const double sum = s + p, bp = sum - s;
    c += (s - (sum - bp)) + (p - bp);
    s = sum;
  }
  return s + c;
}

double norm(const std::vector<float>& v) {
  double s = 0.;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

void expect_within(double error, double bound, const std::string& what) {
  worst_ratio = std::max(worst_ratio, error / bound);
  if (!(error <= bound)) {
    ++failures;
    if (!quiet) std::printf("FAIL %s: error %.3e > bound %.3e\n", what.c_str(), error, bound);
  }
}

template <class T>
constexpr cudaDataType_t kType = std::is_same_v<T, __half> ? CUDA_R_16F : CUDA_R_16BF;

// The emulated GEMM's value for one pair of packed rows, summed in `order`.
template <class T>
float gemm_dot(const std::vector<T>& a, const std::vector<T>& b, const char* order, std::mt19937& rng) {
  std::vector<float> terms(a.size());
  for (size_t t = 0; t < a.size(); ++t)
    terms[t] = float(double(emu::read_operand(&a[t], kType<T>, 0)) * double(emu::read_operand(&b[t], kType<T>, 0)));
  return emu::accumulate(terms, order, rng);
}

template <class T>
windows::Norms pack(const std::vector<float>& a, std::vector<T>& out) {
  out.resize(a.size());
  double p = 0., e = 0.;
  for (size_t t = 0; t < a.size(); ++t) {
    float b;
    if constexpr (std::is_same_v<T, __half>) {
      out[t] = __float2half_rn(a[t]);
      b = __half2float(out[t]);
    } else {
      out[t] = __float2bfloat16_rn(a[t]);
      b = __bfloat162float(out[t]);
    }
    p += double(b) * b;
    e += (double(b) - a[t]) * (double(b) - a[t]);
  }
  return {norm(a) * (1 + 1e-6), std::sqrt(p), std::sqrt(e)};
}

// All bounds for one pair of fp32 operand rows a, b (already scaled).
template <class T>
void check_pair(const std::vector<float>& a, const std::vector<float>& b, const std::string& name,
                std::mt19937& rng, double shrink) {
  const int64_t d = static_cast<int64_t>(a.size());
  const double na = norm(a) * (1 + 1e-6), nb = norm(b) * (1 + 1e-6);
  const double truth = reference_dot(a, b);
  const float ex = exact::dot(a.data(), 1.f, b.data(), 1.f, d);
  expect_within(std::fabs(ex - truth), shrink * windows::exact_error(Metric::InnerProduct, d, na, nb),
                name + " exact score");
  float chain = 0.f;
  for (int64_t t = 0; t < d; ++t) chain = std::fmaf(a[t], b[t], chain);
  expect_within(std::fabs(double(chain) - ex), shrink * windows::simt_key_error(Metric::InnerProduct, d, na, nb),
                name + " SIMT key");
  std::vector<T> pa, pb;
  const windows::Norms xa = pack(a, pa), yb = pack(b, pb);
  for (const char* order : {"sequential", "reversed", "pairwise", "blocked", "random", "truncated"}) {
    const float g = gemm_dot(pa, pb, order, rng);
    expect_within(std::fabs(double(g) - ex), shrink * windows::gemm_key_error(Metric::InnerProduct, d, xa, yb),
                  name + " GEMM key (" + order + ")");
    // squared L2 keys: 2 g - (|a|^2 + |b|^2) in fp32 against -(exact squared distance)
    const float sqa = float(exact::sq_norm(a.data(), d)), sqb = float(exact::sq_norm(b.data(), d));
    const float key = (g + g) - (sqa + sqb);
    const float dist = exact::sqdist(a.data(), b.data(), d);
    expect_within(std::fabs(double(key) + dist), shrink * windows::gemm_key_error(Metric::SquaredL2, d, xa, yb),
                  name + " L2 GEMM key (" + order + ")");
  }
}

template <class T>
void run_suite(const char* type, double shrink, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  for (int d : {7, 64, 301, 1024}) {
    for (int kind = 0; kind < 5; ++kind) {
      std::vector<float> a(d), b(d);
      for (int t = 0; t < d; ++t) {
        switch (kind) {
          case 0: a[t] = normal(rng); b[t] = normal(rng); break;                      // Gaussian
          case 1: a[t] = normal(rng) * (t < 3 ? 100.f : 1.f); b[t] = normal(rng) * (t < 3 ? 100.f : 1.f); break;
          case 2: a[t] = 0.5f + unit(rng); b[t] = 0.5f + unit(rng); break;            // all positive
          case 3: {                                                                   // near half an ulp
            const float ulp = std::is_same_v<T, __half> ? 1.f / 2048 : 1.f / 256;
            a[t] = 1.f + ulp * (0.5f + 1e-3f * unit(rng));
            b[t] = 1.f + ulp * (0.5f - 1e-3f * unit(rng));
            break;
          }
          default: a[t] = 1e-6f * (0.5f + unit(rng)); b[t] = 0.5f + unit(rng); break;  // fp16 subnormals
        }
      }
      if (kind != 2 && kind != 3) {  // cosine-like rows: unit norm, as the engine scales them
        const float sa = exact::row_scale(exact::sq_norm(a.data(), d), true);
        const float sb = exact::row_scale(exact::sq_norm(b.data(), d), true);
        for (int t = 0; t < d; ++t) a[t] *= sa, b[t] *= sb;
      }
      check_pair<T>(a, b, std::string(type) + " d=" + std::to_string(d) + " kind=" + std::to_string(kind), rng,
                    shrink);
    }
  }
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::mt19937 rng(7);
  run_suite<__half>("fp16", 1.0, rng);
  run_suite<__nv_bfloat16>("bf16", 1.0, rng);
  const int sound = failures;
  std::printf("worst error / bound: %.3f\n", worst_ratio);
  // Teeth: the same adversary must break bounds five times narrower.
  const int before = failures;
  quiet = true;
  run_suite<__half>("fp16 (bound / 5)", 0.2, rng);
  run_suite<__nv_bfloat16>("bf16 (bound / 5)", 0.2, rng);
  const bool teeth = failures > before;
  quiet = false;
  failures = before;
  if (!teeth) {
    ++failures;
    std::printf("FAIL the adversary breaks no bound five times narrower\n");
  }
  // threshold_below never exceeds kth - window (checked in float64, exact for these).
  std::uniform_real_distribution<float> any(-4.f, 4.f);
  for (int i = 0; i < 200000; ++i) {
    const float kth = std::ldexp(any(rng), int(any(rng) * 8)), window = std::fabs(std::ldexp(any(rng), int(any(rng) * 8)));
    const float th = windows::threshold_below(kth, window);
    if (!(double(th) <= double(kth) - double(window))) {
      ++failures;
      std::printf("FAIL threshold_below(%a, %a) = %a\n", kth, window, th);
      break;
    }
  }
  if (!(windows::window_of(1e39) == INFINITY && windows::threshold_below(1.f, INFINITY) == -INFINITY))
    ++failures, std::printf("FAIL infinite windows\n");
  std::printf(failures == 0 && sound == 0 ? "ALL OK\n" : "%d FAILURES\n", failures);
  return failures == 0 ? 0 : 1;
}
