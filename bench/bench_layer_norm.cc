// The L1 layer norm's row kernels (qtrain/kernels/layer_norm_rows.h) against their scalar references at the ViT's
// shapes (64 images × 16 tokens = 1024 rows of 64 features; 4096 × 64), single thread. "forward" runs a row's
// statistics, working values and affine output; "backward" its gradient sums, dx output stage and dγ/dβ sums.
// Inputs: int32 activations spanning 2^20 (working shift k > 0), gradients spanning 2^24. After the runs, a table
// gives the reference/SIMD time ratios.
//
//   ./bench_layer_norm                                 best kernel target
//   QTRAIN_KERNEL_TARGET=AVX2 ./bench_layer_norm       a lower target (see qtrain/kernels/dispatch.h)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/layer_norm_rows.h"

namespace {

namespace k = qtrain::kernels;

constexpr std::size_t kFeatures = 64;
std::map<std::string, double> g_ns;  // "forward/1024/simd" → fastest ns per row

std::vector<int32_t> values(std::size_t n, unsigned seed, int bits) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(-(1 << bits), 1 << bits);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct Data {
  std::size_t rows;
  std::vector<int32_t> x, g, gamma, xh, y, dx;
  std::vector<int16_t> d;
  std::vector<int64_t> beta, lo, hi, sdy;
  explicit Data(std::size_t r)
      : rows(r), x(values(r * kFeatures, 1, 20)), g(values(r * kFeatures, 2, 24)), gamma(values(kFeatures, 3, 14)),
        xh(r * kFeatures), y(r * kFeatures), dx(r * kFeatures), d(r * kFeatures), beta(kFeatures, 1000),
        lo(kFeatures), hi(kFeatures), sdy(kFeatures) {}
};

template <bool kRef>
void forward(benchmark::State& state) {
  Data v(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) {
    for (std::size_t r = 0; r < v.rows; ++r) {
      const int32_t* row = v.x.data() + r * kFeatures;
      const k::LnRowStats s = kRef ? k::ref::ln_row_stats(row, kFeatures) : k::ln_row_stats(row, kFeatures);
      const auto mu = static_cast<int32_t>((s.sum >> 6) >> 6);  // the row's mean at k = 6
      int16_t* d = v.d.data() + r * kFeatures;
      if (kRef) {
        k::ref::ln_row_center(row, kFeatures, 6, mu, d);
        k::ref::ln_row_affine(d, kFeatures, int64_t{1} << 30, 30, v.gamma.data(), 15, v.beta.data(),
                              v.xh.data() + r * kFeatures, v.y.data() + r * kFeatures);
      } else {
        k::ln_row_center(row, kFeatures, 6, mu, d);
        k::ln_row_affine(d, kFeatures, int64_t{1} << 30, 30, v.gamma.data(), 15, v.beta.data(),
                         v.xh.data() + r * kFeatures, v.y.data() + r * kFeatures);
      }
    }
    benchmark::ClobberMemory();
  }
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(v.rows * state.iterations()),
                                                benchmark::Counter::kIsRate);
}

template <bool kRef>
void backward(benchmark::State& state) {
  Data v(static_cast<std::size_t>(state.range(0)));
  for (std::size_t i = 0; i < v.d.size(); ++i) v.d[i] = static_cast<int16_t>(v.x[i] >> 6);
  for (std::size_t i = 0; i < v.xh.size(); ++i) v.xh[i] = v.x[i] >> 5;
  for (auto _ : state) {
    for (std::size_t r = 0; r < v.rows; ++r) {
      const int32_t* g = v.g.data() + r * kFeatures;
      const int16_t* d = v.d.data() + r * kFeatures;
      if (kRef) {
        benchmark::DoNotOptimize(k::ref::ln_row_grad_sums(g, d, kFeatures, v.gamma.data(), 10));
        k::ref::ln_row_dx(g, d, kFeatures, v.gamma.data(), 10, int64_t{1} << 28, int64_t{1} << 40, 40, 3,
                          v.dx.data() + r * kFeatures);
        k::ref::ln_row_accumulate(g, v.xh.data() + r * kFeatures, kFeatures, v.lo.data(), v.hi.data(), v.sdy.data());
      } else {
        benchmark::DoNotOptimize(k::ln_row_grad_sums(g, d, kFeatures, v.gamma.data(), 10));
        k::ln_row_dx(g, d, kFeatures, v.gamma.data(), 10, int64_t{1} << 28, int64_t{1} << 40, 40, 3,
                     v.dx.data() + r * kFeatures);
        k::ln_row_accumulate(g, v.xh.data() + r * kFeatures, kFeatures, v.lo.data(), v.hi.data(), v.sdy.data());
      }
    }
    benchmark::ClobberMemory();
  }
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(v.rows * state.iterations()),
                                                benchmark::Counter::kIsRate);
}

class Reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const auto it = r.counters.find("rows/s");
      if (r.run_type != Run::RT_Iteration || it == r.counters.end() || it->second.value <= 0) continue;
      const double ns = 1e9 / it->second.value;
      auto [pos, fresh] = g_ns.emplace(r.benchmark_name(), ns);
      if (!fresh && ns < pos->second) pos->second = ns;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

BENCHMARK(forward<false>)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK(forward<true>)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK(backward<false>)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK(backward<true>)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  Reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nkernels %s; ns per row of %zu features (fastest run), reference / SIMD:\n",
              k::active_target().name.c_str(), kFeatures);
  for (const char* pass : {"forward", "backward"})
    for (const char* rows : {"1024", "4096"}) {
      char simd[64], ref[64];
      std::snprintf(simd, sizeof simd, "%s<false>/%s", pass, rows);
      std::snprintf(ref, sizeof ref, "%s<true>/%s", pass, rows);
      const auto a = g_ns.find(simd), b = g_ns.find(ref);
      if (a == g_ns.end() || b == g_ns.end()) continue;
      std::printf("  %-8s %5s rows  simd %7.1f  reference %7.1f  ratio %.2f\n", pass, rows, a->second, b->second,
                  b->second / a->second);
    }
  benchmark::Shutdown();
  return 0;
}
