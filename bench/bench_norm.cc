// Integer L1 batch norm against integer L2 batch norm (qtrain/engine/layers/norm.h) at ResNet shapes, single thread:
// the comparison the paper makes ("L1 ≥ 1.35× the throughput of L2 on CPU"). Both layers share every pass but the
// statistic (L1: Σ|d| and Σsign(d) by abs/clamp and adds; L2: Σd² by one vpmaddwd per row pair, a split at bit 15
// and two adds) and the backward's per-element term (sign(d)·b by selects vs d·b by a multiply), and both run the
// same Highway kernels (qtrain/kernels/norm.h).
//
//   ./bench_norm                                  best kernel target
//   QTRAIN_KERNEL_TARGET=AVX2 ./bench_norm         a lower target (see qtrain/kernels/dispatch.h)
//
// Cases (rows × C, rows = N·H·W): 64·28·28 × 16, 64·14·14 × 32, 64·7·7 × 64, CIFAR 64·32·32 × 16, 128·16·16 × 32.
//   step    forward (training: batch statistics, running statistics, stored working values) + backward (dx, dγ, dβ)
//   fwd     the training forward alone;  bwd  the backward alone (replayed on the same forward's tape)
//   stat    the one pass that differs in the forward: Σ|d| and Σsign(d) (L1) vs Σd² (L2), kernels only
// "wide" inputs span 2^20 (8-bit convolution accumulators: working shift k > 0); "narrow" ones 2^12 (4-bit: k = 0,
// no shifts). Counters: elements/s = rows·C per second. After the runs, a table gives L1/L2 throughput ratios of the
// fastest repetitions' CPU times (run with e.g. --benchmark_repetitions=5).
//
// The L1 layer norm (ln/…) at the ViT's shapes, 64 features per token: 64 images × 16 tokens = 1024 rows, and 4096
// rows. fwd = the training forward, bwd = the backward (dx, dγ, dβ); each at the active kernel target ("simd") and
// with the SCALAR target forced ("scalar": every row pass runs its scalar reference, layer_norm_rows.h), and a second
// table gives scalar/SIMD time ratios. Only the layer norm: --benchmark_filter=ln/
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/norm.h"

namespace {

using qtrain::BatchNorm;
using qtrain::DType;
using qtrain::NormKind;
using qtrain::ScaleAxis;
using qtrain::Tensor;

struct Shape {
  const char* label;
  std::size_t rows, cols;
};
const Shape kShapes[] = {{"64x28x28x16", 64 * 28 * 28, 16},
                         {"64x14x14x32", 64 * 14 * 14, 32},
                         {"64x7x7x64", 64 * 7 * 7, 64},
                         {"cifar64x32x32x16", 64 * 32 * 32, 16},
                         {"cifar128x16x16x32", 128 * 16 * 16, 32}};

// A convolution output: per-channel offset and spread (2^bits), per-channel exponents.
Tensor make_input(std::size_t rows, std::size_t cols, int bits, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor x(rows, cols, DType::kI32);
  std::vector<int> e(cols);
  std::vector<std::normal_distribution<double>> dist;
  for (std::size_t c = 0; c < cols; ++c) {
    e[c] = -14 - static_cast<int>(c % 4);
    const double spread = std::ldexp(1.0, bits);
    dist.emplace_back(spread * (static_cast<double>(rng() % 1000) / 1000.0 - 0.5), spread / 8);
  }
  x.set_exponents(ScaleAxis::kCol, e);
  int32_t* p = x.data<int32_t>();
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) p[r * cols + c] = static_cast<int32_t>(std::lround(dist[c](rng)));
  return x;
}

// An output gradient as the next layer's dgrad GEMM gives it (int32, one exponent, ~20 bits).
Tensor make_grad(std::size_t rows, std::size_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0, 1 << 18);
  Tensor g(rows, cols, DType::kI32, -40);
  for (std::size_t i = 0; i < g.size(); ++i) g.data<int32_t>()[i] = static_cast<int32_t>(std::lround(dist(rng)));
  return g;
}

std::unique_ptr<BatchNorm> make_layer(NormKind kind, std::size_t cols) {
  if (kind == NormKind::kL1) return std::make_unique<qtrain::L1BatchNorm>(cols, 1);
  return std::make_unique<qtrain::L2BatchNorm>(cols, 1);
}

enum class Mode { kStep, kForward, kBackward, kStat };

void run(benchmark::State& state, NormKind kind, Mode mode, const Shape& shape, int bits) {
  const std::size_t rows = shape.rows, cols = shape.cols;
  auto layer = make_layer(kind, cols);
  auto x = std::make_shared<qtrain::Var>();
  x->value = make_input(rows, cols, bits, 1);
  Tensor dy = make_grad(rows, cols, 2);
  uint64_t step = 0;
  if (mode == Mode::kStat) {
    // The statistic pass alone, with the working precision the layer would pick.
    std::vector<int64_t> sum(cols), dev(cols), sign(cols);
    std::vector<int32_t> lo(cols), hi(cols), shift(cols), center(cols);
    qtrain::kernels::norm_stats(x->value.data<int32_t>(), rows, cols, sum.data(), lo.data(), hi.data());
    for (std::size_t c = 0; c < cols; ++c) {
      const uint64_t range = static_cast<uint64_t>(int64_t{hi[c]} - lo[c]);
      int k = 0;
      while (range > 32767 && (range >> k) + 1 > 32767) ++k;
      shift[c] = k;
      center[c] = static_cast<int32_t>((sum[c] / static_cast<int64_t>(rows)) >> k);
    }
    const qtrain::kernels::NormColumns col{shift.data(), center.data()};
    for (auto _ : state) {
      if (kind == NormKind::kL1) {
        qtrain::kernels::norm_abs_dev(x->value.data<int32_t>(), rows, cols, col, dev.data(), sign.data());
      } else {
        qtrain::kernels::norm_sq_dev(x->value.data<int32_t>(), rows, cols, col, dev.data());
      }
      benchmark::DoNotOptimize(dev.data());
      benchmark::ClobberMemory();
    }
  } else {
    for (auto _ : state) {
      if (mode == Mode::kBackward) state.PauseTiming();
      qtrain::Tape tape;
      x->grad = Tensor();
      x->has_grad = false;
      qtrain::VarPtr y = layer->forward({nullptr, &tape, 0, step++}, x);
      if (mode == Mode::kForward) {
        benchmark::DoNotOptimize(y->value.data<int32_t>());
        tape.clear();
        continue;
      }
      if (mode == Mode::kBackward) state.ResumeTiming();
      y->grad = std::move(dy);  // no copy: handed back after the backward
      y->has_grad = true;
      tape.backward();
      dy = std::move(y->grad);
      benchmark::DoNotOptimize(x->grad.data<int32_t>());
    }
  }
  state.counters["elements"] =
      benchmark::Counter(static_cast<double>(rows * cols), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- L1 layer norm ----------------------------------------------------------------------------------------------

const std::size_t kLnRows[] = {1024, 4096};
constexpr std::size_t kLnFeatures = 64;

// The residual stream a ViT block's norm reads: one exponent, per-token offsets, ~20-bit spread.
Tensor make_tokens(std::size_t rows, std::size_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0, 1 << 18);
  Tensor x(rows, cols, DType::kI32, -16);
  int32_t* p = x.data<int32_t>();
  for (std::size_t r = 0; r < rows; ++r) {
    const double offset = static_cast<double>(static_cast<int64_t>(rng() % (1 << 20)) - (1 << 19));
    for (std::size_t c = 0; c < cols; ++c) p[r * cols + c] = static_cast<int32_t>(std::lround(offset + dist(rng)));
  }
  return x;
}

// Forces the SCALAR target for the case's lifetime when asked; restores the target that was active (the best one,
// or QTRAIN_KERNEL_TARGET's).
class ScopedTarget {
 public:
  explicit ScopedTarget(bool scalar) : saved_(qtrain::kernels::active_target().name) {
    if (scalar && !qtrain::kernels::force_target("SCALAR")) std::fprintf(stderr, "no SCALAR target compiled in\n");
  }
  ~ScopedTarget() { qtrain::kernels::force_target(saved_); }
  ScopedTarget(const ScopedTarget&) = delete;
  ScopedTarget& operator=(const ScopedTarget&) = delete;

 private:
  std::string saved_;
};

void run_layer_norm(benchmark::State& state, bool forward_only, std::size_t rows, bool scalar) {
  const ScopedTarget target(scalar);
  qtrain::L1LayerNorm layer(kLnFeatures, 1);
  auto x = std::make_shared<qtrain::Var>();
  x->value = make_tokens(rows, kLnFeatures, 1);
  x->requires_grad = true;
  Tensor dy = make_grad(rows, kLnFeatures, 2);
  uint64_t step = 0;
  for (auto _ : state) {
    if (!forward_only) state.PauseTiming();
    qtrain::Tape tape;
    x->grad = Tensor();
    x->has_grad = false;
    qtrain::VarPtr y = layer.forward({nullptr, &tape, 0, step++}, x);
    if (forward_only) {
      benchmark::DoNotOptimize(y->value.data<int32_t>());
      tape.clear();
      continue;
    }
    state.ResumeTiming();
    y->grad = std::move(dy);  // no copy: handed back after the backward
    y->has_grad = true;
    tape.backward();
    dy = std::move(y->grad);
    benchmark::DoNotOptimize(x->grad.data<int32_t>());
  }
  state.counters["elements"] =
      benchmark::Counter(static_cast<double>(rows * kLnFeatures), benchmark::Counter::kIsIterationInvariantRate);
}

std::string ln_case_name(bool forward_only, std::size_t rows, bool scalar) {
  return std::string("ln/") + (forward_only ? "fwd/" : "bwd/") + std::to_string(rows) + "x" +
         std::to_string(kLnFeatures) + (scalar ? "/scalar" : "/simd");
}

// Remembers each repetition's CPU time per iteration so main can print L1/L2 ratios of the fastest repetitions (CPU
// time, and the minimum: on a shared machine the least-disturbed run is the best estimate of the work itself).
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(OutputOptions opts) : ConsoleReporter(opts) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs)
      if (r.run_type == Run::RT_Iteration) times_[r.run_name.function_name].push_back(r.GetAdjustedCPUTime());
  }
  // Fastest CPU time per iteration (the benchmark's unit), or 0 when the case did not run.
  double fastest(const std::string& name) const {
    const auto it = times_.find(name);
    if (it == times_.end() || it->second.empty()) return 0;
    return *std::min_element(it->second.begin(), it->second.end());
  }

 private:
  std::map<std::string, std::vector<double>> times_;
};

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kStep:
      return "step";
    case Mode::kForward:
      return "fwd";
    case Mode::kBackward:
      return "bwd";
    case Mode::kStat:
      return "stat";
  }
  return "?";
}

std::string case_name(Mode mode, NormKind kind, const Shape& s, int bits) {
  return std::string(mode_name(mode)) + "/" + (kind == NormKind::kL1 ? "L1" : "L2") + "/" + s.label + "/" +
         (bits > 16 ? "wide" : "narrow");
}

}  // namespace

int main(int argc, char** argv) {
  // Steady-state allocation: every step allocates its multi-megabyte outputs afresh, and glibc's dynamic thresholds
  // may hand the top of the heap back to the system after each step, so that the next one page-faults it in again —
  // at random, for one layer and not the other (up to 1.7× on a step here). Fixed thresholds keep such buffers on the
  // heap and untrimmed: the benchmark measures the normalization, not the kernel's page-fault handler.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  const Mode modes[] = {Mode::kStep, Mode::kForward, Mode::kBackward, Mode::kStat};
  for (Mode mode : modes)
    for (int bits : {20, 12})
      for (const Shape& s : kShapes)
        for (NormKind kind : {NormKind::kL1, NormKind::kL2})
          benchmark::RegisterBenchmark(case_name(mode, kind, s, bits).c_str(), [=](benchmark::State& st) {
            run(st, kind, mode, s, bits);
          })->Unit(benchmark::kMicrosecond);
  for (bool fwd : {true, false})
    for (std::size_t rows : kLnRows)
      for (bool scalar : {false, true})
        benchmark::RegisterBenchmark(ln_case_name(fwd, rows, scalar).c_str(), [=](benchmark::State& st) {
          run_layer_norm(st, fwd, rows, scalar);
        })->Unit(benchmark::kMicrosecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::printf("kernel target: %s, single thread\n", qtrain::kernels::active_target().name.c_str());
  RatioReporter reporter(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_Defaults
                                               : benchmark::ConsoleReporter::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf(
      "\nL1/L2 throughput ratio = fastest CPU time of L2 / of L1 (> 1: L1 faster)\n%-6s %-7s %-18s %7s %11s %11s\n",
      "pass", "input", "shape", "ratio", "L1 Melem/s", "L2 Melem/s");
  for (Mode mode : modes)
    for (int bits : {20, 12})
      for (const Shape& s : kShapes) {
        const double t1 = reporter.fastest(case_name(mode, NormKind::kL1, s, bits));
        const double t2 = reporter.fastest(case_name(mode, NormKind::kL2, s, bits));
        if (t1 <= 0 || t2 <= 0) continue;
        const double elems = static_cast<double>(s.rows * s.cols);  // per microsecond = M/s
        std::printf("%-6s %-7s %-18s %7.3f %11.1f %11.1f\n", mode_name(mode), bits > 16 ? "wide" : "narrow", s.label,
                    t2 / t1, elems / t1, elems / t2);
      }
  std::printf(
      "\nL1 layer norm: speed-up = fastest CPU time with the SCALAR target / with %s\n%-5s %-9s %8s %10s %10s\n",
      qtrain::kernels::active_target().name.c_str(), "pass", "shape", "speed-up", "simd ns/el", "scalar ns/el");
  for (bool fwd : {true, false})
    for (std::size_t rows : kLnRows) {
      const double ts = reporter.fastest(ln_case_name(fwd, rows, false));
      const double tr = reporter.fastest(ln_case_name(fwd, rows, true));
      if (ts <= 0 || tr <= 0) continue;
      const double el = static_cast<double>(rows * kLnFeatures) / 1000;  // times are in µs
      std::printf("%-5s %-9s %8.2f %10.2f %10.2f\n", fwd ? "fwd" : "bwd",
                  (std::to_string(rows) + "x" + std::to_string(kLnFeatures)).c_str(), tr / ts, ts / el, tr / el);
    }
  benchmark::Shutdown();
  return 0;
}
