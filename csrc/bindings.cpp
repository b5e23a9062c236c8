// The one pybind11 module, layerknn._core. Deliberately thin: the Python layer has already
// validated shapes, dtypes, devices and values and made arrays contiguous; this file only
// unpacks buffers or raw device pointers, releases the GIL (keeping Ctrl-C alive, see
// interrupt.h) and dispatches to the CPU engine or, in CUDA builds, the CUDA engine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu/engine_options.h"
#include "cpu/knn_cpu.h"
#include "cpu/overlap_cpu.h"
#include "cpu/overlap_measures.h"
#include "cpu/parallel.h"
#include "cpu/row_norms.h"
#include "interrupt.h"
#include "testing_hooks.h"
#if defined(LAYERKNN_WITH_CUDA)
#include "cuda/knn_cuda.h"
#endif
#include "cuda/limits.h"  // plain C++: the CUDA size limits are checkable in every build

namespace py = pybind11;
using namespace layerknn;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using IndexArray = py::array_t<int32_t, py::array::c_style>;

void require_rank3(const py::array& a, const char* name) {
  if (a.ndim() != 3) {
    throw std::invalid_argument(std::string(name) + " must be 3-D, got " +
                                std::to_string(a.ndim()) + "-D");
  }
}

py::array_t<double> row_sq_norms(FloatArray x, int num_threads) {
  require_rank3(x, "x");
  const int64_t L = x.shape(0), n = x.shape(1), d = x.shape(2);
  py::array_t<double> out({L, n});
  const float* px = x.data();
  double* po = out.mutable_data();
  run_interruptible([&](const std::atomic<bool>& cancel) {
    cpu::row_sq_norms(px, L * n, d, po, num_threads, cancel);
  });
  return out;
}

// Calls progress(done, total) from the polling thread whenever the engine's count of finished
// layers has moved, and once more at the end if the last call was not (total, total).
class LayerProgress {
 public:
  LayerProgress(py::object callback, int64_t total) : callback_(std::move(callback)), total_(total) {
    if (!callback_.is_none() && !PyCallable_Check(callback_.ptr())) {
      throw py::type_error("progress must be None or a callable(done, total), got " +
                           std::string(py::str(py::type::of(callback_).attr("__name__"))));
    }
  }
  std::atomic<int64_t>* counter() { return callback_.is_none() ? nullptr : &done_; }
  void operator()() {  // with the GIL
    if (callback_.is_none()) return;
    const int64_t done = done_.load();
    if (done == reported_) return;
    reported_ = done;
    callback_(done, total_);
  }

 private:
  py::object callback_;
  int64_t total_;
  std::atomic<int64_t> done_{0};
  int64_t reported_ = 0;
};

py::tuple knn_cpu(FloatArray x, py::object y_obj, int k, int metric, bool exclude_self,
                  int num_threads, py::object progress) {
  require_rank3(x, "x");
  KnnProblem p;
  p.x = x.data();
  p.L = x.shape(0);
  p.n = x.shape(1);
  p.d = x.shape(2);
  p.m = p.n;
  FloatArray y;
  if (!y_obj.is_none()) {
    y = y_obj.cast<FloatArray>();
    require_rank3(y, "y");
    if (y.shape(0) != p.L || y.shape(2) != p.d) throw std::invalid_argument("y shape mismatch");
    p.y = y.data();
    p.m = y.shape(1);
  }
  p.k = k;
  p.metric = static_cast<Metric>(metric);
  p.exclude_self = exclude_self && p.y == nullptr;
  const int64_t limit = p.m - (p.exclude_self ? 1 : 0);
  if (k < 1 || k > limit) throw std::invalid_argument("k out of range");
  IndexArray indices({p.L, p.n, static_cast<int64_t>(k)});
  FloatArray scores({p.L, p.n, static_cast<int64_t>(k)});
  int32_t* pi = indices.mutable_data();
  float* ps = scores.mutable_data();
  LayerProgress report(std::move(progress), p.L);
  std::atomic<int64_t>* layers_done = report.counter();
  run_interruptible([&](const std::atomic<bool>& cancel) {
    cpu::knn(p, pi, ps, num_threads, cancel, layers_done);
  }, report);
  return py::make_tuple(indices, scores);
}

OverlapProblem overlap_problem(int64_t La, int64_t Lb, int64_t n, int ka, int kb, int k) {
  if (k < 1 || k > ka || k > kb) throw std::invalid_argument("k out of range");
  if (k > 65535) throw std::invalid_argument("k must be below 65536");
  OverlapProblem p;
  p.La = La;
  p.Lb = Lb;
  p.n = n;
  p.ka = ka;
  p.kb = kb;
  p.k = k;
  return p;
}

py::tuple overlap_cpu(IndexArray a, IndexArray b, int k, bool per_prompt, int num_threads) {
  require_rank3(a, "a");
  require_rank3(b, "b");
  if (a.shape(1) != b.shape(1)) throw std::invalid_argument("a and b differ in n");
  OverlapProblem p = overlap_problem(a.shape(0), b.shape(0), a.shape(1),
                                     static_cast<int>(a.shape(2)), static_cast<int>(b.shape(2)), k);
  p.a = a.data();
  p.b = b.data();
  py::array_t<double> mean({p.La, p.Lb});
  py::object counts = py::none();
  uint16_t* pc = nullptr;
  if (per_prompt) {
    py::array_t<uint16_t> c({p.La, p.Lb, p.n});
    pc = c.mutable_data();
    counts = c;
  }
  double* pm = mean.mutable_data();
  run_interruptible([&](const std::atomic<bool>& cancel) {
    cpu::overlap(p, pm, pc, num_threads, cancel);
  });
  return py::make_tuple(mean, counts);
}

py::tuple overlap_measure_cpu(IndexArray a, IndexArray b, int k, int measure, bool per_prompt,
                              int num_threads) {
  require_rank3(a, "a");
  require_rank3(b, "b");
  if (a.shape(1) != b.shape(1)) throw std::invalid_argument("a and b differ in n");
  if (!cpu::valid_measure(measure)) {
    throw std::invalid_argument("unknown measure code " + std::to_string(measure));
  }
  OverlapProblem p = overlap_problem(a.shape(0), b.shape(0), a.shape(1),
                                     static_cast<int>(a.shape(2)), static_cast<int>(b.shape(2)), k);
  p.a = a.data();
  p.b = b.data();
  py::array_t<double> mean({p.La, p.Lb});
  py::object scores = py::none();
  float* ps = nullptr;
  if (per_prompt) {
    py::array_t<float> s({p.La, p.Lb, p.n});
    ps = s.mutable_data();
    scores = s;
  }
  double* pm = mean.mutable_data();
  const auto code = static_cast<cpu::Measure>(measure);
  run_interruptible([&](const std::atomic<bool>& cancel) {
    cpu::overlap_measure(p, code, pm, ps, num_threads, cancel);
  });
  return py::make_tuple(mean, scores);
}

[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "layerknn was built without CUDA support; reinstall with nvcc on PATH "
      "(LAYERKNN_CUDA=ON pip install layerknn) to use GPU arrays");
}

template <class T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void knn_cuda(uintptr_t x, uintptr_t y, int64_t L, int64_t n, int64_t m, int64_t d, int k,
              int metric, bool exclude_self, uintptr_t indices, uintptr_t scores, int device,
              uintptr_t stream) {
#if defined(LAYERKNN_WITH_CUDA)
  KnnProblem p;
  p.x = as_ptr<const float>(x);
  p.y = as_ptr<const float>(y);
  p.L = L;
  p.n = n;
  p.m = y ? m : n;
  p.d = d;
  p.k = k;
  p.metric = static_cast<Metric>(metric);
  p.exclude_self = exclude_self && y == 0;
  py::gil_scoped_release release;
  cuda::knn(p, as_ptr<int32_t>(indices), as_ptr<float>(scores), device, as_ptr<void>(stream));
#else
  (void)x, (void)y, (void)L, (void)n, (void)m, (void)d, (void)k, (void)metric;
  (void)exclude_self, (void)indices, (void)scores, (void)device, (void)stream;
  no_cuda();
#endif
}

void overlap_cuda(uintptr_t a, uintptr_t b, int64_t La, int64_t Lb, int64_t n, int ka, int kb,
                  int k, uintptr_t mean, uintptr_t counts, int device, uintptr_t stream) {
#if defined(LAYERKNN_WITH_CUDA)
  OverlapProblem p = overlap_problem(La, Lb, n, ka, kb, k);
  p.a = as_ptr<const int32_t>(a);
  p.b = as_ptr<const int32_t>(b);
  py::gil_scoped_release release;
  cuda::overlap(p, as_ptr<double>(mean), as_ptr<uint16_t>(counts), device, as_ptr<void>(stream));
#else
  (void)a, (void)b, (void)La, (void)Lb, (void)n, (void)ka, (void)kb, (void)k;
  (void)mean, (void)counts, (void)device, (void)stream;
  no_cuda();
#endif
}

py::tuple cuda_device_count() {
#if defined(LAYERKNN_WITH_CUDA)
  std::string why;
  const int count = cuda::device_count(&why);
  return py::make_tuple(count, why);
#else
  return py::make_tuple(0, std::string("layerknn was built without CUDA support"));
#endif
}

int cuda_max_k() {
#if defined(LAYERKNN_WITH_CUDA)
  return cuda::max_k();
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "layerknn's compiled engines (private; use the layerknn package)";
#ifdef LAYERKNN_VERSION
  m.attr("__version__") = LAYERKNN_VERSION;
#endif
#if defined(LAYERKNN_WITH_CUDA)
  m.def("built_with_cuda", [] { return true; });
#else
  m.def("built_with_cuda", [] { return false; });
#endif
  m.def("cuda_device_count", &cuda_device_count,
        "(count, reason): usable CUDA devices; 0 with the reason when none");
  m.def("cuda_max_k", &cuda_max_k, "largest k the CUDA k-NN kernels support (0 without CUDA)");
#if defined(LAYERKNN_WITH_CUDA)
  m.def("cuda_tensor_core_built", [] { return cuda::has_tensor_core_path(); },
#else
  m.def("cuda_tensor_core_built", [] { return false; },
#endif
        "whether the CUDA engine's tensor-core candidate path (cuBLAS) was built");
  m.def("simd_level", [] { return std::string(cpu::simd_level()); },
        "SIMD kernel family the CPU engine selected for this processor");
  m.def("active_kernel_table", [] { return std::string(cpu::active_kernel_table()); },
        "fp32 kernel table the CPU engine would run now: simd_level capped by LAYERKNN_CPU_SIMD");
  m.def("tile_precisions", &cpu::tile_precisions,
        "tile precisions the CPU engine may use on this processor (see LAYERKNN_CPU_KERNEL)");
  m.def("default_num_threads", &cpu::default_num_threads);
  m.def("last_knn_report", [] {
    py::list out;
    for (const auto& r : cpu::last_layer_reports()) out.append(py::make_tuple(r.table, r.candidates_per_row));
    return out;
  }, "[(tile kernel table, mean exactly scored candidates per row)] per layer of the last CPU knn");
  m.def("row_sq_norms", &row_sq_norms, py::arg("x"), py::arg("num_threads") = 0,
        "float64 squared L2 norm of each row of x [L, n, d] -> [L, n]");
  m.def("knn_cpu", &knn_cpu, py::arg("x"), py::arg("y"), py::arg("k"), py::arg("metric"),
        py::arg("exclude_self"), py::arg("num_threads") = 0, py::arg("progress") = py::none(),
        "exact k-NN of x [L, n, d] (among y [L, m, d] or itself) -> (indices, scores) [L, n, k];\n"
        "progress(done_layers, total_layers), if given, is called as layers finish");
  m.def("overlap_cpu", &overlap_cpu, py::arg("a"), py::arg("b"), py::arg("k"),
        py::arg("per_prompt"), py::arg("num_threads") = 0,
        "neighbour overlap of a [La, n, ka] and b [Lb, n, kb] -> (mean [La, Lb], counts or None)");
  m.def("overlap_measure_cpu", &overlap_measure_cpu, py::arg("a"), py::arg("b"), py::arg("k"),
        py::arg("measure"), py::arg("per_prompt"), py::arg("num_threads") = 0,
        "neighbourhood measure (code, see _backend.MEASURE_CODES) of a [La, n, ka] and b [Lb, n, kb]"
        " -> (mean [La, Lb] float64, per-prompt scores [La, Lb, n] float32 or None)");
  // Plain C++ (csrc/cuda/limits.h), in every build: the Python layer refuses a problem the CUDA
  // engine cannot index before it allocates outputs on the device.
  m.def("cuda_check_knn", &cuda::limits::check_knn, py::arg("L"), py::arg("n"), py::arg("m"),
        py::arg("d"), py::arg("k"), py::arg("self_join"), py::arg("exclude_self"),
        "raise ValueError if the CUDA k-NN engine cannot run this problem (size limits, k range)");
  m.def("cuda_check_overlap", &cuda::limits::check_overlap, py::arg("La"), py::arg("Lb"),
        py::arg("n"), py::arg("ka"), py::arg("kb"), py::arg("k"),
        "raise ValueError if the CUDA overlap engine cannot run this problem");
  m.def("knn_cuda", &knn_cuda, "exact k-NN on device pointers (see layerknn._backend)");
  m.def("overlap_cuda", &overlap_cuda, "neighbour overlap on device pointers");
  bind_testing_hooks(m.def_submodule("_testing", "the CPU engine's pure cores, for tests only"));
}
