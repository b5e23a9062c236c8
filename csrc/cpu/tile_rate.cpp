// Times one kernel table's tile GEMM on random rows (see tile_rate.h).
#include "cpu/tile_rate.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <vector>

#include "cpu/cost_model.h"
#include "cpu/engine_state.h"

namespace layerknn::cpu {

std::pair<double, int64_t> tile_gemm_rate(const KernelSet& table, int64_t d, double seconds) {
  if (d < 1 || !(seconds > 0))
    throw std::invalid_argument("tile_gemm_rate needs d >= 1 and seconds > 0");
  const int64_t rows = kBlock, dpad = padded_features(d, table);
  std::vector<float> x(rows * d);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(gen);
  // fp32/bf16 packing multiplies by the row scale; int8 packing by the quant scale (codes up to
  // about 127 for these rows); the tile's dequantisation scales are 1.
  const std::vector<float> scale(rows, table.precision == kInt8 ? 30.f : 1.f);
  const std::vector<float> ones(rows + kBlock, 1.f);
  const std::vector<int32_t> offsets(rows + kBlock, 0);
  const TileScales scales{ones.data(), ones.data(), offsets.data()};
  const int64_t bytes = (rows + 64) * dpad * 4;
  AlignedBuffer broadcast = aligned_buffer(bytes), vector = aligned_buffer(bytes);
  table.pack_broadcast_side(x.data(), rows, d, scale.data(), dpad, broadcast.get());
  table.pack_vector_side(x.data(), rows, d, scale.data(), dpad, vector.get());
  std::vector<float> tile(rows * kBlock);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  double best = 1e300, elapsed = 0.;
  int64_t tiles = 0;
  while (tiles < 3 || elapsed < seconds) {
    const auto before = Clock::now();
    table.gemm(broadcast.get(), rows, vector.get(), rows, dpad, tile.data(), kBlock, &scales);
    const auto after = Clock::now();
    best = std::min(best, std::chrono::duration<double>(after - before).count());
    elapsed = std::chrono::duration<double>(after - start).count();
    ++tiles;
  }
  return {best > 0 ? 2.0 * rows * rows * double(d) / best / 1e9 : 0., tiles};
}

namespace {

constexpr int64_t kFeatures = 512;  // the width both calibrations run at

// Seconds per gathered exact score: batches of 16 random rows of a 2048-row layer (4 MiB, as a
// pooled layer of a small model) scored against one query row by fp32's dot_batch; the best of
// three passes of 256 batches.
double gathered_score_seconds(const KernelSet& fp32) {
  constexpr int64_t kRows = 2048;
  constexpr int kBatch = 16, kBatches = 256;
  std::vector<float> layer(kRows * kFeatures), out(kBatch), scales(kBatch, 1.f);
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  for (float& v : layer) v = normal(gen);
  std::uniform_int_distribution<int64_t> pick(0, kRows - 1);
  std::vector<const float*> rows(kBatch * kBatches);
  for (const float*& row : rows) row = layer.data() + pick(gen) * kFeatures;
  using Clock = std::chrono::steady_clock;
  double best = 1e300;
  for (int pass = 0; pass < 3; ++pass) {
    const auto start = Clock::now();
    for (int b = 0; b < kBatches; ++b)
      fp32.dot_batch(rows[b * kBatch], 1.f, rows.data() + b * kBatch, scales.data(), kBatch,
                     kFeatures, out.data());
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best / (kBatch * kBatches);
}

// Measured once per process and key (a table, or a table's gathered score), under one lock.
template <class Key, class Measure>
double measured_once(const Key& key, Measure measure) {
  static std::mutex mutex;
  static std::map<Key, double> measured;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = measured.find(key);
  return found != measured.end() ? found->second : measured.emplace(key, measure()).first->second;
}

// A table's best tile GFLOP/s at kFeatures, measured once.
double table_rate(const KernelSet& table) {
  return measured_once(&table, [&] { return tile_gemm_rate(table, kFeatures, 1e-3).first; });
}

struct GatheredScore {  // the measured_once key of fp32's gathered score time
  const KernelSet* fp32;
  bool operator<(const GatheredScore& other) const { return fp32 < other.fp32; }
};

}  // namespace

double rescore_cost(const KernelSet& fp32) {
  const double gflops = table_rate(fp32);
  const double gemm_row = gflops > 0 ? 2.0 * kFeatures / (gflops * 1e9) : 0.;
  const double score = measured_once(GatheredScore{&fp32}, [&] { return gathered_score_seconds(fp32); });
  return gemm_row > 0 && score > 0 ? std::clamp(score / gemm_row, 1., 64.) : kRescoreCost;
}

double tile_speedup(const KernelSet& table, const KernelSet& fp32) {
  const double low = table_rate(table), base = table_rate(fp32);
  return low > 0 && base > 0 ? low / base : table.speedup;
}

}  // namespace layerknn::cpu
