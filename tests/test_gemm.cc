// The int8 GEMM kernels against their scalar references, on every Highway target this machine can run.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cctype>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dispatch.h"
#include "tests/target_test_util.h"
#include "kernels/gemm.h"
#include "kernels/thread_pool.h"

namespace qtrain::kernels {
namespace {

enum class Layout { kForward, kDgrad, kWgrad };
const char* name_of(Layout l) {
  switch (l) {
    case Layout::kForward:
      return "forward";
    case Layout::kDgrad:
      return "dgrad";
    case Layout::kWgrad:
      return "wgrad";
  }
  return "?";
}

struct Shape {
  std::size_t n, m, k;
};

// Operand and output sizes of each layout (see gemm.h): {first operand, second operand, output}.
struct Sizes {
  std::size_t a, b, c;
};
Sizes sizes_of(Layout l, const Shape& s) {
  switch (l) {
    case Layout::kForward:
      return {s.n * s.k, s.m * s.k, s.n * s.m};  // X, W → Y
    case Layout::kDgrad:
      return {s.n * s.m, s.m * s.k, s.n * s.k};  // dY, W → dX
    case Layout::kWgrad:
      return {s.n * s.m, s.n * s.k, s.m * s.k};  // dY, X → dW
  }
  return {0, 0, 0};
}

void run(Layout l, const std::vector<int8_t>& a, const std::vector<int8_t>& b, int32_t* c, const Shape& s,
         ThreadPool* pool) {
  switch (l) {
    case Layout::kForward:
      return gemm_forward(a.data(), b.data(), c, s.n, s.m, s.k, pool);
    case Layout::kDgrad:
      return gemm_dgrad(a.data(), b.data(), c, s.n, s.m, s.k, pool);
    case Layout::kWgrad:
      return gemm_wgrad(a.data(), b.data(), c, s.n, s.m, s.k, pool);
  }
}

void run_ref(Layout l, const std::vector<int8_t>& a, const std::vector<int8_t>& b, int32_t* c, const Shape& s) {
  switch (l) {
    case Layout::kForward:
      return ref::gemm_forward(a.data(), b.data(), c, s.n, s.m, s.k);
    case Layout::kDgrad:
      return ref::gemm_dgrad(a.data(), b.data(), c, s.n, s.m, s.k);
    case Layout::kWgrad:
      return ref::gemm_wgrad(a.data(), b.data(), c, s.n, s.m, s.k);
  }
}

// Uniform over the full int8 range, with both extremes planted at the start, the end and in the middle.
std::vector<int8_t> random_int8(std::size_t size, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(-128, 127);
  std::vector<int8_t> v(size);
  for (auto& x : v) x = static_cast<int8_t>(dist(rng));
  if (size >= 1) v[0] = -128;
  if (size >= 2) v[size - 1] = 127;
  if (size >= 4) v[size / 2] = -128, v[size / 2 + 1] = 127;
  return v;
}

constexpr int32_t kSentinel = 0x5A5A5A5A;
constexpr std::size_t kGuard = 16;  // sentinel cells after the output, to catch writes past its end

// Runs the kernel into a sentinel-filled buffer; checks every output against the reference and that nothing
// past the output was written.
std::vector<int32_t> check_against_ref(Layout l, const Shape& s, const std::vector<int8_t>& a,
                                       const std::vector<int8_t>& b, ThreadPool* pool) {
  const std::size_t size = sizes_of(l, s).c;
  std::vector<int32_t> got(size + kGuard, kSentinel), want(size);
  run(l, a, b, got.data(), s, pool);
  run_ref(l, a, b, want.data(), s);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < size && bad < 5; ++i) {
    if (got[i] != want[i]) {
      ++bad;
      ADD_FAILURE() << name_of(l) << " n=" << s.n << " m=" << s.m << " k=" << s.k << ": element " << i << " is "
                    << got[i] << ", reference " << want[i];
    }
  }
  for (std::size_t i = size; i < size + kGuard; ++i) {
    EXPECT_EQ(got[i], kSentinel) << name_of(l) << ": wrote past the end of the output";
  }
  got.resize(size);
  return got;
}

class GemmTarget : public PerTargetTest {};

constexpr Layout kLayouts[] = {Layout::kForward, Layout::kDgrad, Layout::kWgrad};

TEST_P(GemmTarget, MatchesReferenceOnOddShapes) {
  // Each of n, m, k is the reduction of one layout, so odd sizes exercise the micro-kernel's remainders (rows
  // not a multiple of the register tile, reductions not a multiple of the vector) in every layout; multiples
  // of 16 and ragged edges exercise the blocked packing; zeros are empty products (all-zero outputs); a long
  // reduction splits A's rows into several cache blocks.
  const Shape shapes[] = {{1, 1, 1},    {3, 5, 7},      {17, 33, 65},  {64, 10, 784}, {31, 129, 257},
                          {7, 9, 1},    {1, 1, 200},    {5, 4, 63},    {4, 8, 64},    {8, 4, 128},
                          {2, 3, 129},  {64, 256, 784}, {65, 3, 1000}, {6, 70, 33},   {48, 40, 32},
                          {33, 47, 17}, {4, 3, 0},      {3, 0, 4},     {0, 3, 4},     {20, 3, 40000}};
  std::mt19937 rng(1234);
  for (const Shape& s : shapes) {
    for (Layout l : kLayouts) {
      const Sizes z = sizes_of(l, s);
      const auto a = random_int8(z.a, rng), b = random_int8(z.b, rng);
      check_against_ref(l, s, a, b, nullptr);
    }
  }
}

TEST_P(GemmTarget, ExtremesAtMaximalReductionDoNotOverflow) {
  // kMaxReduction products of ±128·±128: the largest sums an int32 accumulator must hold. On AVX3_DL this
  // also drives the VNNI offset path (A+128 overflows int32 on its own; the wrapped result must come back).
  const std::size_t r = kMaxReduction;
  for (std::size_t d = 1; d <= 3; ++d) {
    constexpr std::array<std::pair<int8_t, int8_t>, 3> kValues = {{{-128, -128}, {-128, 127}, {127, -128}}};
    for (const auto& [va, vb] : kValues) {
      const std::vector<Shape> per_layout = {{d, d, r}, {d, r, d}, {r, d, d}};  // reduction over k, m, n
      for (std::size_t li = 0; li < 3; ++li) {
        const Layout l = kLayouts[li];
        const Shape s = per_layout[li];
        const Sizes z = sizes_of(l, s);
        const std::vector<int8_t> a(z.a, va), b(z.b, vb);
        const auto got = check_against_ref(l, s, a, b, nullptr);
        const int64_t expected = static_cast<int64_t>(r) * va * vb;
        for (int32_t v : got) ASSERT_EQ(v, expected) << name_of(l) << " d=" << d;
      }
    }
  }
}

TEST_P(GemmTarget, BitIdenticalForAnyThreadCount) {
  const Shape shapes[] = {{67, 45, 300}, {64, 256, 784}, {3, 130, 77}};
  std::mt19937 rng(99);
  ThreadPool one(1), two(2), three(3);
  for (const Shape& s : shapes) {
    for (Layout l : kLayouts) {
      const Sizes z = sizes_of(l, s);
      const auto a = random_int8(z.a, rng), b = random_int8(z.b, rng);
      const auto base = check_against_ref(l, s, a, b, nullptr);
      for (ThreadPool* pool : {&one, &two, &three}) {
        EXPECT_EQ(check_against_ref(l, s, a, b, pool), base) << name_of(l) << " with " << pool->threads() << " threads";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, GemmTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(GemmDispatch, ListsTargetsBestFirstAndRejectsUnknownNames) {
  const std::vector<Target> targets = available_targets();
  ASSERT_FALSE(targets.empty());
  std::cout << "[ kernels  ] targets tested:";
  for (const Target& t : targets) std::cout << ' ' << t.name;
  std::cout << "  (active: " << active_target().name << ")\n";
  for (std::size_t i = 1; i < targets.size(); ++i) EXPECT_LT(targets[i - 1].bits, targets[i].bits);

  const Target before = active_target();
  EXPECT_FALSE(force_target("NOT_A_TARGET"));
  EXPECT_FALSE(force_target("AVX9000"));
  EXPECT_EQ(active_target().bits, before.bits);

  // Names are case-insensitive, and "" restores the best target.
  const Target& last = targets.back();
  std::string lower = last.name;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  EXPECT_TRUE(force_target(lower));
  EXPECT_EQ(active_target().bits, last.bits);
  EXPECT_TRUE(force_target(""));
  EXPECT_EQ(active_target().bits, targets.front().bits);
}

TEST(ThreadPool, CoversEveryIndexOnceInBoundedTiles) {
  for (std::size_t threads : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{0}}) {
    ThreadPool pool(threads);
    EXPECT_GE(pool.threads(), 1u);
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}}) {
      std::vector<std::atomic<int>> hits(n);
      pool.parallel_for(n, 6, [&](std::size_t begin, std::size_t end) {
        EXPECT_LT(begin, end);
        EXPECT_LE(end - begin, 6u);
        for (std::size_t i = begin; i < end; ++i) hits[i].fetch_add(1);
      });
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i;
    }
  }
  EXPECT_GE(available_processors(), 1u);
}

}  // namespace
}  // namespace qtrain::kernels
