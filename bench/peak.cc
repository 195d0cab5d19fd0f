// Register-only peak loops (see peak.h), one Highway source compiled for every kernel target, dispatched like
// the kernels (so QTRAIN_KERNEL_TARGET also picks the peak that results are compared with).
#include <cstdint>
#include <string>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/peak.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "bench/peak.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::bench::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET == HWY_AVX3_DL
// 24 independent accumulators: vpdpbusd has a latency of ~5 cycles and up to two issue ports, so 24 chains keep
// every port busy; the two inputs stay in registers. Inline asm for the reason given in
// qtrain/kernels/gemm_kernel-inl.h.
#define QTRAIN_VNNI_ATTR __attribute__((target(HWY_TARGET_STR ",avx512vnni")))
QTRAIN_VNNI_ATTR uint64_t PeakLoop(uint64_t iterations) {
  constexpr int kChains = 24;
  __m512i acc[kChains];
  HWY_UNROLL(24)
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_epi32(j);
  __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-5);
  asm volatile("" : "+v"(u), "+v"(s));
  for (uint64_t it = 0; it < iterations; ++it) {
    HWY_UNROLL(24)
    for (int j = 0; j < kChains; ++j) asm volatile("vpdpbusd %2, %1, %0" : "+v"(acc[j]) : "v"(u), "v"(s));
  }
  __m512i sum = acc[0];
  HWY_UNROLL(24)
  for (int j = 1; j < kChains; ++j) sum = _mm512_add_epi32(sum, acc[j]);
  volatile int32_t sink = _mm512_reduce_add_epi32(sum);
  (void)sink;
  return iterations * kChains * 64 * 2;  // 64 products per instruction, 2 ops each
}
#undef QTRAIN_VNNI_ATTR
const char* PeakInstruction() { return "vpdpbusd zmm"; }

#elif HWY_ARCH_X86 && HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
// pmaddwd + paddd: acc_j += madd(a_j, b). The multiply is off the accumulation chain (1-cycle adds), so a few
// chains suffice; `b` is hidden from the compiler each iteration so it cannot hoist the loop-invariant products.
uint64_t PeakLoop(uint64_t iterations) {
  const hn::ScalableTag<int32_t> d32;
  const hn::Repartition<int16_t, decltype(d32)> d16;
#if HWY_TARGET == HWY_AVX3
  constexpr int kChains = 12;
#else
  constexpr int kChains = 6;  // 16 registers: 6 accumulators, 6 multiplicands, b, products
#endif
  hn::Vec<decltype(d32)> acc[kChains], unused[kChains];
  hn::Vec<decltype(d16)> a[kChains];
  HWY_UNROLL(12)
  for (int j = 0; j < kChains; ++j) {
    acc[j] = hn::Set(d32, j);
    unused[j] = hn::Zero(d32);
    a[j] = hn::Set(d16, static_cast<int16_t>(j + 1));
  }
  auto b = hn::Set(d16, int16_t{-7});
  for (uint64_t it = 0; it < iterations; ++it) {
#if HWY_TARGET == HWY_AVX3
    asm volatile("" : "+v"(b.raw));
#else
    asm volatile("" : "+x"(b.raw));
#endif
    HWY_UNROLL(12)
    for (int j = 0; j < kChains; ++j) acc[j] = hn::ReorderWidenMulAccumulate(d32, a[j], b, acc[j], unused[j]);
  }
  auto sum = acc[0];
  HWY_UNROLL(12)
  for (int j = 1; j < kChains; ++j) sum = hn::Add(sum, acc[j]);
  volatile int32_t sink = hn::GetLane(hn::SumOfLanes(d32, sum));
  (void)sink;
  return iterations * kChains * hn::Lanes(d16) * 2;
}
const char* PeakInstruction() {
#if HWY_TARGET == HWY_AVX3
  return "vpmaddwd+vpaddd zmm";
#elif HWY_TARGET == HWY_AVX2
  return "vpmaddwd+vpaddd ymm";
#else
  return "pmaddwd+paddd xmm";
#endif
}

#else
uint64_t PeakLoop(uint64_t /*iterations*/) { return 0; }
const char* PeakInstruction() { return ""; }
#endif

}  // namespace qtrain::bench::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <time.h>

#include <algorithm>

namespace qtrain::bench {
namespace {
// This thread's CPU time, as Google Benchmark's rates use: time the scheduler gave to other processes on a
// shared machine is not counted.
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
}  // namespace

HWY_EXPORT(PeakLoop);
HWY_EXPORT(PeakInstruction);

bool peak_supported() { return !peak_instruction().empty(); }
std::string peak_instruction() { return HWY_DYNAMIC_DISPATCH(PeakInstruction)(); }
uint64_t peak_loop(uint64_t iterations) { return HWY_DYNAMIC_DISPATCH(PeakLoop)(iterations); }

double measure_peak_ops_per_second(int repeats) {
  if (!peak_supported()) return 0.0;
  // Calibrate the iteration count to ~50 ms, then keep the best run (the least disturbed by other processes).
  uint64_t iterations = 1 << 16;
  for (;;) {
    const double t0 = thread_seconds();
    peak_loop(iterations);
    const double s = thread_seconds() - t0;
    if (s > 0.01) {
      iterations = static_cast<uint64_t>(static_cast<double>(iterations) * 0.05 / s) + 1;
      break;
    }
    iterations *= 4;
  }
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = thread_seconds();
    const uint64_t ops = peak_loop(iterations);
    const double s = thread_seconds() - t0;
    best = std::max(best, static_cast<double>(ops) / s);
  }
  return best;
}

}  // namespace qtrain::bench
#endif  // HWY_ONCE
