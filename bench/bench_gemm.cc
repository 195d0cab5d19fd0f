// int8 GEMM throughput in the three layouts of a training step, next to XNNPACK's fp32 fully-connected
// operator at the same shapes (the fp32 peer a user would otherwise run), single thread.
//
//   ./bench_gemm                                   best kernel target
//   QTRAIN_KERNEL_TARGET=AVX2 ./bench_gemm          a lower target (see kernels/dispatch.h)
//
// Shapes are (n, m, k) as in kernels/gemm.h: batch n, m outputs, k inputs. Every case reports GOP/s counting
// 2·n·m·k operations (one multiply and one add per product), whatever the layout; the counter reads
// "GOP=…/s". qtrain's times include packing both operands on every call (gemm.h takes plain matrices);
// XNNPACK packs its weights once at create time, outside the timed loop.
#include <benchmark/benchmark.h>
#include <xnnpack.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/gemm.h"

namespace {

using qtrain::kernels::gemm_dgrad;
using qtrain::kernels::gemm_forward;
using qtrain::kernels::gemm_wgrad;

template <typename T>
std::vector<T> random_vector(std::size_t size, int lo, int hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<T> v(size);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

void set_counters(benchmark::State& state, std::size_t n, std::size_t m, std::size_t k) {
  state.counters["GOP"] =
      benchmark::Counter(2e-9 * static_cast<double>(n * m * k), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- qtrain int8 → int32 ------------------------------------------------------------------------------------
enum class Layout { kForward, kDgrad, kWgrad };

template <Layout L>
void BM_qtrain_s8(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto m = static_cast<std::size_t>(state.range(1));
  const auto k = static_cast<std::size_t>(state.range(2));
  // forward: X[n×k], W[m×k] → Y[n×m]; dgrad: dY[n×m], W[m×k] → dX[n×k]; wgrad: dY[n×m], X[n×k] → dW[m×k].
  const std::size_t a_size = L == Layout::kForward ? n * k : n * m;
  const std::size_t b_size = L == Layout::kWgrad ? n * k : m * k;
  const std::size_t c_size = L == Layout::kForward ? n * m : (L == Layout::kDgrad ? n * k : m * k);
  const auto a = random_vector<int8_t>(a_size, -128, 127, 1);
  const auto b = random_vector<int8_t>(b_size, -128, 127, 2);
  std::vector<int32_t> c(c_size);
  for (auto _ : state) {
    if constexpr (L == Layout::kForward) gemm_forward(a.data(), b.data(), c.data(), n, m, k, nullptr);
    if constexpr (L == Layout::kDgrad) gemm_dgrad(a.data(), b.data(), c.data(), n, m, k, nullptr);
    if constexpr (L == Layout::kWgrad) gemm_wgrad(a.data(), b.data(), c.data(), n, m, k, nullptr);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, n, m, k);
}

// ---- XNNPACK fp32 fully-connected -------------------------------------------------------------------------------
// Each layout as the fully-connected product XNNPACK would run for it, weights packed once at create time
// (outside the timed loop — generous to XNNPACK for wgrad, whose "weights" are this step's activations):
//   forward  Y[n×m]  = X[n×k]·W[m×k]ᵀ   batch n, k → m
//   dgrad    dX[n×k] = dY[n×m]·W[m×k]   batch n, m → k, weights given input-major (XNN_FLAG_TRANSPOSE_WEIGHTS)
//   wgrad    dW[m×k] = dYᵀ[m×n]·X[n×k]  batch m, n → k, weights X input-major; dYᵀ taken as already transposed
template <Layout L>
void BM_xnnpack_f32(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto m = static_cast<std::size_t>(state.range(1));
  const auto k = static_cast<std::size_t>(state.range(2));
  std::size_t batch = n, in = k, out = m;
  uint32_t flags = 0;
  if constexpr (L == Layout::kDgrad) batch = n, in = m, out = k, flags = XNN_FLAG_TRANSPOSE_WEIGHTS;
  if constexpr (L == Layout::kWgrad) batch = m, in = n, out = k, flags = XNN_FLAG_TRANSPOSE_WEIGHTS;
  const auto input = random_vector<float>(batch * in, -8, 8, 1);
  const auto weights = random_vector<float>(in * out, -8, 8, 2);
  std::vector<float> output(batch * out);

  xnn_operator_t op = nullptr;
  const float inf = std::numeric_limits<float>::infinity();
  if (xnn_create_fully_connected_nc_f32(in, out, in, out, weights.data(), /*bias=*/nullptr, -inf, inf, flags, &op) !=
          xnn_status_success ||
      xnn_setup_fully_connected_nc_f32(op, batch, input.data(), output.data(), /*threadpool=*/nullptr) !=
          xnn_status_success) {
    state.SkipWithError("XNNPACK fully-connected f32: create/setup failed");
    if (op != nullptr) xnn_delete_operator(op);
    return;
  }
  for (auto _ : state) {
    if (xnn_run_operator(op, /*threadpool=*/nullptr) != xnn_status_success) {
      state.SkipWithError("XNNPACK fully-connected f32: run failed");
      break;
    }
    benchmark::DoNotOptimize(output.data());
    benchmark::ClobberMemory();
  }
  xnn_delete_operator(op);
  set_counters(state, n, m, k);
}

// (n, m, k): MLP layer 784→256 at batch 64, a hidden layer, the classifier head, and one large square-ish GEMM.
void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "m", "k"});
  b->Args({64, 256, 784});
  b->Args({64, 128, 256});
  b->Args({64, 10, 128});
  b->Args({256, 1024, 1024});
  b->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_qtrain_s8<Layout::kForward>)->Apply(shapes);
BENCHMARK(BM_xnnpack_f32<Layout::kForward>)->Apply(shapes);
BENCHMARK(BM_qtrain_s8<Layout::kDgrad>)->Apply(shapes);
BENCHMARK(BM_xnnpack_f32<Layout::kDgrad>)->Apply(shapes);
BENCHMARK(BM_qtrain_s8<Layout::kWgrad>)->Apply(shapes);
BENCHMARK(BM_xnnpack_f32<Layout::kWgrad>)->Apply(shapes);

}  // namespace

int main(int argc, char** argv) {
  if (xnn_initialize(/*allocator=*/nullptr) != xnn_status_success) {
    std::fprintf(stderr, "bench_gemm: xnn_initialize failed (XNNPACK does not support this CPU?)\n");
    return EXIT_FAILURE;
  }
  benchmark::AddCustomContext("qtrain_kernel_target", qtrain::kernels::active_target().name);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return EXIT_FAILURE;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  xnn_deinitialize();
  return EXIT_SUCCESS;
}
