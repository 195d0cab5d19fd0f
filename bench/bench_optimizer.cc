// One optimizer step per iteration on one parameter tensor, single thread: integer SGD (momentum, weight decay)
// against integer AdamW (qtrain/engine/optim/adamw.h), at the sizes of a ViT's and an MLP's largest tensors.
// Counter: elements/s. After the runs, a line gives AdamW's cost per element relative to SGD's.
//
//   ./bench_optimizer [--benchmark_repetitions=5]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "qtrain/engine/core/param.h"
#include "qtrain/engine/optim/adamw.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/quant/rng.h"

namespace {

std::map<std::string, double> g_best_ns;  // benchmark name → the fastest ns per element seen

void set_grad(qtrain::Param& p, uint64_t seed) {
  p.grad = qtrain::Tensor(p.master.rows(), p.master.cols(), qtrain::DType::kI32, p.master.exponent() - 4);
  const qtrain::quant::CounterRng rng(seed, p.id);
  for (std::size_t i = 0; i < p.grad.size(); ++i)
    p.grad.data<int32_t>()[i] = static_cast<int32_t>(rng.below(i, 1u << 16)) - (1 << 15);
}

void run(benchmark::State& state, const char* name) {
  const auto cols = static_cast<std::size_t>(state.range(0));
  qtrain::Param p;
  p.name = std::string(1, 'w');  // (not = "w": GCC 12 -Wrestrict false positive)
  p.id = 1;
  qtrain::init_uniform(p, 64, cols, cols, 3);
  const std::unique_ptr<qtrain::Optimizer> opt = qtrain::make_optimizer(name, {});
  uint64_t step = 0;
  set_grad(p, 0);
  for (auto _ : state) {
    p.has_grad = true;  // the same gradient every step: the pass's cost, not the gradient's making
    opt->step({&p}, 1e-3, step++, 7);
  }
  const double n = static_cast<double>(p.master.size());
  state.counters["elements/s"] = benchmark::Counter(n * static_cast<double>(state.iterations()),
                                                    benchmark::Counter::kIsRate);
}

class Reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      const auto it = r.counters.find("elements/s");
      if (it == r.counters.end() || it->second.value <= 0) continue;
      const std::string name = r.benchmark_name();
      const double ns = 1e9 / it->second.value;
      auto [pos, fresh] = g_best_ns.emplace(name, ns);
      if (!fresh && ns < pos->second) pos->second = ns;
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

BENCHMARK_CAPTURE(run, sgd, "sgd")->Arg(256)->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(run, adamw, "adamw")->Arg(256)->Arg(4096)->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  Reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nns per element (fastest run), AdamW / SGD:\n");
  for (const char* size : {"256", "4096"}) {
    char sgd[64], adamw[64];
    std::snprintf(sgd, sizeof sgd, "run/sgd/%s", size);
    std::snprintf(adamw, sizeof adamw, "run/adamw/%s", size);
    const auto s = g_best_ns.find(sgd), a = g_best_ns.find(adamw);
    if (s == g_best_ns.end() || a == g_best_ns.end()) continue;
    std::printf("  64 x %-5s  sgd %.2f  adamw %.2f  ratio %.2f\n", size, s->second, a->second, a->second / s->second);
  }
  benchmark::Shutdown();
  return 0;
}
