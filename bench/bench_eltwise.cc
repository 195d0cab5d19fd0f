// Throughput of the element-wise passes of a training step (qtrain/kernels/eltwise.h, Philox draws) at the size of one
// ResNet-8 activation (batch 64 × 28 × 28 pixels × 16 channels = 802816 values), single thread, against their
// scalar references.
//
//   ./bench_eltwise                                  best kernel target
//   QTRAIN_KERNEL_TARGET=AVX2 ./bench_eltwise        a lower target (see qtrain/kernels/dispatch.h)
//
// "B/s" counts the bytes each pass must move (inputs read + outputs written).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/philox.h"

namespace {

namespace k = qtrain::kernels;

constexpr std::size_t kRows = 64 * 28 * 28, kCols = 16, kN = kRows * kCols;

std::vector<int32_t> values(std::size_t n, unsigned seed, int bits = 24) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(-(1 << bits), 1 << bits);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void bytes(benchmark::State& state, std::size_t per_element) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kN * per_element));
}

template <bool kRef>
void BM_MaxAbs(benchmark::State& state) {
  const auto x = values(kN, 1);
  for (auto _ : state)
    benchmark::DoNotOptimize(kRef ? k::ref::max_abs_i32(x.data(), kN, true) : k::max_abs_i32(x.data(), kN, true));
  bytes(state, 4);
}

template <bool kRef>
void BM_Requantize(benchmark::State& state) {
  const auto x = values(kN, 2);
  std::vector<int8_t> out(kN);
  for (auto _ : state) {
    if (kRef) {
      k::ref::requantize_i8(x.data(), kN, 21, 0, 15, out.data());
    } else {
      k::requantize_i8(x.data(), kN, 21, 0, 15, out.data());
    }
    benchmark::ClobberMemory();
  }
  bytes(state, 5);
}

template <bool kRef>
void BM_ShiftQuantRound(benchmark::State& state) {
  const auto g = values(kN, 3);
  std::vector<uint32_t> draws(kN);
  for (std::size_t i = 0; i < kN; ++i) draws[i] = static_cast<uint32_t>(i * 2654435761u);
  std::vector<int> shift(kCols), up(kCols);
  for (std::size_t c = 0; c < kCols; ++c) {
    shift[c] = 22 - static_cast<int>(c % 5);
    up[c] = 4 - static_cast<int>(c % 5);
  }
  std::vector<int8_t> q(kN), s(kN);
  for (auto _ : state) {
    if (kRef) {
      k::ref::shiftquant_round(g.data(), draws.data(), kRows, kCols, shift.data(), up.data(), 7, q.data(), s.data());
    } else {
      k::shiftquant_round(g.data(), draws.data(), kRows, kCols, shift.data(), up.data(), 7, q.data(), s.data());
    }
    benchmark::ClobberMemory();
  }
  bytes(state, 10);
}

void BM_PhiloxDraws(benchmark::State& state) {
  std::vector<uint32_t> out(kN);
  for (auto _ : state) {
    k::philox_blocks(0, kN / 4, 12345, {1, 2}, out.data());
    benchmark::ClobberMemory();
  }
  bytes(state, 4);
}

template <bool kRef>
void BM_AlignedSum(benchmark::State& state) {
  const auto a = values(kN, 4, 28), b = values(kN, 5, 28);
  std::vector<int32_t> out(kN);
  for (auto _ : state) {
    benchmark::DoNotOptimize(kRef ? k::ref::aligned_sum_range(a.data(), b.data(), kN, 0, 2, out.data()).max
                                  : k::aligned_sum_range(a.data(), b.data(), kN, 0, 2, out.data()).max);
    benchmark::ClobberMemory();
  }
  bytes(state, 12);
}

template <bool kRef>
void BM_Relu(benchmark::State& state) {
  const auto x = values(kN, 6);
  std::vector<int32_t> y(kN);
  for (auto _ : state) {
    benchmark::DoNotOptimize(kRef ? k::ref::relu_i32(x.data(), kN, y.data()) : k::relu_i32(x.data(), kN, y.data()));
    benchmark::ClobberMemory();
  }
  bytes(state, 8);
}

BENCHMARK(BM_MaxAbs<false>)->Name("max_abs_i32");
BENCHMARK(BM_MaxAbs<true>)->Name("max_abs_i32/ref");
BENCHMARK(BM_Requantize<false>)->Name("requantize_i8");
BENCHMARK(BM_Requantize<true>)->Name("requantize_i8/ref");
BENCHMARK(BM_ShiftQuantRound<false>)->Name("shiftquant_round");
BENCHMARK(BM_ShiftQuantRound<true>)->Name("shiftquant_round/ref");
BENCHMARK(BM_PhiloxDraws)->Name("philox_blocks");
BENCHMARK(BM_AlignedSum<false>)->Name("aligned_sum_range+store");
BENCHMARK(BM_AlignedSum<true>)->Name("aligned_sum_range+store/ref");
BENCHMARK(BM_Relu<false>)->Name("relu_i32");
BENCHMARK(BM_Relu<true>)->Name("relu_i32/ref");

}  // namespace

BENCHMARK_MAIN();
