// layerknn._core._testing: the CPU engine's pure cores bound one by one, so tests can attack
// them directly (tests/test_windows.py tries to break the error windows of tile_windows.h with
// adversarial rows; the cost model's choice and the exact score are checked alone too). Private:
// not part of the package API, and included by bindings.cpp only.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/cost_model.h"
#include "cpu/engine_options.h"
#include "cpu/knn_kernels.h"
#include "cpu/tile_rate.h"
#include "cpu/tile_split.h"
#include "cpu/tile_windows.h"

namespace layerknn {

inline cpu::Precision testing_precision(int precision) {
  if (precision < 0 || precision >= cpu::kPrecisions)
    throw std::invalid_argument("precision must be 0 (fp32), 1 (bf16) or 2 (int8), got " +
                                std::to_string(precision));
  return static_cast<cpu::Precision>(precision);
}

inline Metric testing_metric(int metric) {
  if (metric < 0 || metric > 2)
    throw std::invalid_argument("metric must be 0 (ip), 1 (cosine) or 2 (l2), got " +
                                std::to_string(metric));
  return static_cast<Metric>(metric);
}

inline cpu::OperandNorms testing_norms(const std::tuple<double, double, double>& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t)};
}

// The fp32 kernel table the engine would use now (honours LAYERKNN_CPU_SIMD).
inline const cpu::KernelSet& testing_table() { return *cpu::choose_kernels(Metric::Cosine, 1).fp32; }

inline void bind_testing_hooks(pybind11::module_ m) {
  namespace py = pybind11;
  using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
  using Norms = std::tuple<double, double, double>;
  m.def("tile_error", [](int precision, double dpad, Norms x, Norms y) {
    return cpu::tile_error(testing_precision(precision), dpad, testing_norms(x), testing_norms(y));
  }, py::arg("precision"), py::arg("dpad"), py::arg("x"), py::arg("y"),
        "bound on |tile - <x, y>|; x, y = (a, p, e) norms (tile_windows.h)");
  m.def("exact_error", [](int metric, double d, double ax, double ay) {
    return cpu::exact_error(testing_metric(metric), d, ax, ay);
  }, py::arg("metric"), py::arg("d"), py::arg("ax"), py::arg("ay"),
        "bound on |exact fp32 score - true score|");
  m.def("key_error", [](int metric, int precision, double d, double dpad, Norms x, Norms y) {
    return cpu::key_error(testing_metric(metric), testing_precision(precision), d, dpad,
                          testing_norms(x), testing_norms(y));
  }, py::arg("metric"), py::arg("precision"), py::arg("d"), py::arg("dpad"), py::arg("x"),
        py::arg("y"), "bound B on |approximate tile key - exact key|");
  m.def("key_window", [](int metric, int precision, int64_t d, int64_t dpad, Norms x, Norms y) {
    return cpu::key_window(testing_metric(metric), testing_precision(precision), d, dpad,
                           testing_norms(x), testing_norms(y));
  }, py::arg("metric"), py::arg("precision"), py::arg("d"), py::arg("dpad"), py::arg("x"),
        py::arg("y"), "the float window 2 B (1 + 1e-6) + 1e-30, rounded up");
  m.def("cheapest_precision",
        [](double pass_rows, int k, double list_budget, std::vector<std::pair<int, double>> low,
           double rescore_cost) {
          std::vector<cpu::SampledPrecision> sampled;
          for (const auto& [precision, count] : low)
            sampled.push_back({testing_precision(precision), count});
          return static_cast<int>(
              cpu::cheapest_precision(pass_rows, k, list_budget, sampled, rescore_cost));
        },
        py::arg("pass_rows"), py::arg("k"), py::arg("list_budget"), py::arg("low"),
        py::arg("rescore_cost") = cpu::kRescoreCost,
        "the cost model's choice among fp32 and low = [(precision, mean candidates), ...]");
  m.def("rescore_cost", [] {
    py::gil_scoped_release release;
    return cpu::rescore_cost(testing_table());
  }, "the measured cost of one gathered exact score in fp32 GEMM rows (tile_rate.h)");
  // Split windows of int8 tiles by default; precision 0 (fp32) or 1 (bf16) with dpad their packed
  // features.
  auto split_precision = [](int precision) { return testing_precision(precision); };
  m.def("split_tile_error", [split_precision](double d, int m, double c, Norms x, Norms y, double sx,
                                              double sy, int precision, double dpad) {
    return cpu::split_tile_error(split_precision(precision), dpad > 0 ? dpad : d, d, m, c,
                                 testing_norms(x), testing_norms(y), sx, sy);
  }, py::arg("d"), py::arg("m"), py::arg("c"), py::arg("x"), py::arg("y"), py::arg("sx"),
        py::arg("sy"), py::arg("precision") = 2, py::arg("dpad") = 0.,
        "bound on |split tile - (<z_x, z_y> + c^2)| (tile_windows.h)");
  m.def("split_key_window",
        [split_precision](int metric, int64_t d, int m, double c, Norms x, Norms y, double sx,
                          double sy, int precision, int64_t dpad) {
          const Metric mt = testing_metric(metric);
          if (mt == Metric::SquaredL2)
            throw std::invalid_argument("split_key_window: metric must be 0 (ip) or 1 (cosine)");
          return cpu::split_key_window(mt, split_precision(precision), dpad > 0 ? dpad : d, d, m, c,
                                       testing_norms(x), testing_norms(y), sx, sy);
        },
        py::arg("metric"), py::arg("d"), py::arg("m"), py::arg("c"), py::arg("x"), py::arg("y"),
        py::arg("sx"), py::arg("sy"), py::arg("precision") = 2, py::arg("dpad") = 0,
        "the float window of centred, split int8 (or bf16) tiles");
  m.def("choose_split", [](FloatArray x, FloatArray scale, int m) {
    if (x.ndim() != 2 || scale.ndim() != 1 || scale.shape(0) != x.shape(0) || m < 0)
      throw std::invalid_argument("choose_split needs x [rows, d], scale [rows], m >= 0");
    cpu::LayerSplit split;
    cpu::choose_split(x.data(), scale.data(), x.shape(0), x.shape(1), m, &split);
    py::array_t<float> mu(static_cast<py::ssize_t>(split.mu.size()));
    std::copy(split.mu.begin(), split.mu.end(), mu.mutable_data());
    return py::make_tuple(mu, split.columns, split.mu_norm, split.outlying);
  }, py::arg("x"), py::arg("scale"), py::arg("m"),
        "(mu, split-off columns, |mu|, outlying) of a layer's scaled rows (tile_split.h)");
  m.def("split_width", &cpu::split_width, py::arg("d"));
  m.def("row_stats", [](FloatArray x, bool normalise) {
    if (x.ndim() != 1) throw std::invalid_argument("x must be 1-D");
    cpu::RowStats stats;
    testing_table().row_stats(x.data(), x.shape(0), normalise, &stats);
    return py::make_tuple(stats.scale, stats.sq_norm, stats.norm);
  }, py::arg("x"), py::arg("normalise"),
        "(scale, sq_norm, norm) of one row as the engine's active table computes them");
  m.def("exact_scores", [](FloatArray a, FloatArray b, int metric, float sa, FloatArray sb) {
    if (a.ndim() != 1 || b.ndim() != 2 || b.shape(1) != a.shape(0) || sb.ndim() != 1 ||
        sb.shape(0) != b.shape(0))
      throw std::invalid_argument("exact_scores needs a [d], b [count, d], sb [count]");
    const int count = static_cast<int>(b.shape(0));
    const int64_t d = a.shape(0);
    std::vector<const float*> rows(count);
    for (int q = 0; q < count; ++q) rows[q] = b.data() + q * d;
    py::array_t<float> out(count);
    const cpu::KernelSet& table = testing_table();
    if (testing_metric(metric) == Metric::SquaredL2) {
      table.sqdist_batch(a.data(), rows.data(), count, d, out.mutable_data());
    } else {
      table.dot_batch(a.data(), sa, rows.data(), sb.data(), count, d, out.mutable_data());
    }
    return out;
  }, py::arg("a"), py::arg("b"), py::arg("metric"), py::arg("sa"), py::arg("sb"),
        "the engine's exact fp32 score of a [d] against each row of b [count, d] (active table)");
  m.def("tile_gemm_rate", [](const std::string& precision, int64_t d, double seconds) {
    const cpu::KernelChoice choice = cpu::choose_kernels(Metric::Cosine, d);
    const cpu::KernelSet* table = precision == "fp32" ? choice.fp32
                                  : precision == "bf16" ? choice.bf16
                                  : precision == "int8" ? choice.int8
                                                        : nullptr;
    if (!table)
      throw std::invalid_argument("tile_gemm_rate: precision '" + precision +
                                  "' is not among this CPU's tiles (see tile_precisions())");
    std::pair<double, int64_t> rate;
    {
      py::gil_scoped_release release;
      rate = cpu::tile_gemm_rate(*table, d, seconds);
    }
    const auto [gflops, tiles] = rate;
    return py::make_tuple(std::string(table->name), gflops, tiles);
  }, py::arg("precision"), py::arg("d"), py::arg("seconds") = 0.2,
        "(table, GFLOP/s, tiles) of one 192 x 192 tile GEMM at d features, one thread (benchmarks)");
}

}  // namespace layerknn
