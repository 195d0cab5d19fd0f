// The integer softmax's row kernels (qtrain/kernels/int_softmax.h), forward and backward, against their scalar
// references at attention's shapes: ViT-tiny on CIFAR (16 tokens: 4096 rows of 16 per call) and ViT-B/16 at 224²
// (197 tokens: 1024 rows of 197). Single thread. Inputs: a Q·Kᵀ accumulator of ±16 real units at 2^−10, scale 1/4
// (d_head = 16); the gradient 24-bit. After the runs, a table gives the reference/SIMD time ratios.
//
//   ./bench_softmax                                  best kernel target
//   QTRAIN_KERNEL_TARGET=AVX2 ./bench_softmax        a lower target (see qtrain/kernels/dispatch.h)
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/int_softmax.h"

namespace {

namespace k = qtrain::kernels;

struct Shape {
  std::size_t rows, cols;
  const char* label;
};
constexpr Shape kShapes[] = {{4096, 16, "4096x16"}, {1024, 197, "1024x197"}};
constexpr int64_t kM = 1 << 15;  // scale 1/4 = 2^15·2^−17
constexpr int kS = 17;

std::vector<int32_t> values(std::size_t n, unsigned seed, int bits) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(-(1 << bits), 1 << bits);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void forward(benchmark::State& state, const Shape& s, bool ref) {
  const auto x = values(s.rows * s.cols, 1, 14);
  const std::vector<int> shift(s.rows, -(-10 + 16));
  std::vector<int32_t> p(s.rows * s.cols);
  const k::SoftmaxRows shape{s.rows, s.cols, 0, 0};
  for (auto _ : state) {
    if (ref) {
      k::ref::softmax_forward_i32(x.data(), shift.data(), shape, kM, kS, p.data());
    } else {
      k::softmax_forward_i32(x.data(), shift.data(), shape, kM, kS, p.data());
    }
    benchmark::ClobberMemory();
  }
}

void backward(benchmark::State& state, const Shape& s, bool ref) {
  const auto x = values(s.rows * s.cols, 1, 14);
  const std::vector<int> shift(s.rows, -(-10 + 16));
  std::vector<int32_t> p(s.rows * s.cols);
  k::ref::softmax_forward_i32(x.data(), shift.data(), {s.rows, s.cols, 0, 0}, kM, kS, p.data());
  const auto g = values(s.rows * s.cols, 2, 24);
  const int kg = 24 + 1 - 15;  // |g| ≤ 2^24: the smallest k with 2^24 >> k ≤ 2^15 − 1
  std::vector<int64_t> d(s.rows * s.cols);
  for (auto _ : state) {
    if (ref) {
      k::ref::softmax_backward(p.data(), g.data(), s.rows, s.cols, kg, kM, d.data());
    } else {
      k::softmax_backward(p.data(), g.data(), s.rows, s.cols, kg, kM, d.data());
    }
    benchmark::ClobberMemory();
  }
}

std::string case_name(bool fwd, const Shape& s, bool ref) {
  return std::string(fwd ? "fwd/" : "bwd/") + s.label + (ref ? "/ref" : "/simd");
}

// Remembers each repetition's CPU time per iteration so main can print ratios of the fastest repetitions.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(OutputOptions opts) : ConsoleReporter(opts) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs)
      if (r.run_type == Run::RT_Iteration) times_[r.run_name.function_name].push_back(r.GetAdjustedCPUTime());
  }
  double fastest(const std::string& name) const {  // 0 when the case did not run
    const auto it = times_.find(name);
    if (it == times_.end() || it->second.empty()) return 0;
    return *std::min_element(it->second.begin(), it->second.end());
  }

 private:
  std::map<std::string, std::vector<double>> times_;
};

}  // namespace

int main(int argc, char** argv) {
  for (bool fwd : {true, false})
    for (const Shape& s : kShapes)
      for (bool ref : {false, true})
        benchmark::RegisterBenchmark(case_name(fwd, s, ref).c_str(), [=](benchmark::State& st) {
          fwd ? forward(st, s, ref) : backward(st, s, ref);
        })->Unit(benchmark::kMicrosecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::printf("kernel target: %s, single thread\n", k::active_target().name.c_str());
  RatioReporter reporter(isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_Defaults
                                               : benchmark::ConsoleReporter::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nspeed-up = fastest CPU time of the reference / of the SIMD kernel\n%-5s %-9s %8s %10s %10s\n", "pass",
              "shape", "speed-up", "simd ns/el", "ref ns/el");
  for (bool fwd : {true, false})
    for (const Shape& s : kShapes) {
      const double ts = reporter.fastest(case_name(fwd, s, false)), tr = reporter.fastest(case_name(fwd, s, true));
      if (ts <= 0 || tr <= 0) continue;
      const double el = static_cast<double>(s.rows * s.cols) / 1000;  // times are in µs
      std::printf("%-5s %-9s %8.2f %10.2f %10.2f\n", fwd ? "fwd" : "bwd", s.label, tr / ts, ts / el, tr / el);
    }
  benchmark::Shutdown();
  return 0;
}
