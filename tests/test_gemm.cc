// The int8 GEMM kernels against their scalar references, on every Highway target this machine can run.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cctype>
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/int4.h"
#include "qtrain/kernels/thread_pool.h"
#include "tests/gemm_test_util.h"
#include "tests/target_test_util.h"

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

// A stride-1 convolution's dX as one GEMM (conv2d.cc, dgrad_as_conv) reduces over k²·Cout terms, up to
// 9·14793 = 133137 for 3×3 kernels: beyond kMaxReduction, exact only because both operands stay within ±127.
TEST_P(GemmTarget, SymmetricOperandsBeyondMaxReductionAreExact) {
  constexpr std::size_t r = 9 * 14793;
  static_assert(int64_t{r} * 127 * 127 <= INT32_MAX && int64_t{r} > int64_t{kMaxReduction});
  for (const auto& [va, vb] : {std::pair<int8_t, int8_t>{127, 127}, {-127, 127}}) {
    const Shape s{3, 2, r};
    const std::vector<int8_t> x(s.n * s.k, va), w(s.m * s.k, vb);
    const int64_t expected = static_cast<int64_t>(r) * va * vb;
    for (int32_t v : check_against_ref(Layout::kForward, s, x, w, nullptr)) ASSERT_EQ(v, expected);
    std::vector<int32_t> y(s.n * s.m);
    gemm_forward_packed(x.data(), pack_weights_forward(w.data(), s.m, s.k, nullptr), y.data(), s.n, nullptr);
    for (int32_t v : y) ASSERT_EQ(v, expected);
  }
}

TEST_P(GemmTarget, BitIdenticalForAnyThreadCount) {
  const Shape shapes[] = {{67, 45, 300}, {64, 256, 784}, {3, 130, 77}};
  std::mt19937 rng(99);
  ThreadPool one(1), two(2, ThreadPool::Split::kAlways), three(3, ThreadPool::Split::kAlways);
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

// Values in [−8, 7] (the int4 range), both extremes planted like random_int8.
std::vector<int8_t> random_int4(std::size_t size, std::mt19937& rng) { return random_in_range(size, -8, 7, rng); }

std::vector<uint8_t> to_int4(const std::vector<int8_t>& v, std::size_t rows, std::size_t cols) {
  std::vector<uint8_t> out(rows * int4_row_bytes(cols) + 1);  // +1: a non-null pointer for empty matrices
  pack_int4(v.data(), rows, cols, out.data());
  return out;
}

// Element-by-element comparison with the kernel's output in a sentinel-guarded buffer (`got` has kGuard extra
// cells that must still hold kSentinel).
void expect_same(const std::vector<int32_t>& got, const std::vector<int32_t>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size() + kGuard) << what;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < want.size() && bad < 5; ++i) {
    if (got[i] != want[i]) {
      ++bad;
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", reference " << want[i];
    }
  }
  for (std::size_t i = want.size(); i < got.size(); ++i) EXPECT_EQ(got[i], kSentinel) << what << ": wrote past the end";
}

std::string describe(const char* what, const Shape& s, const ThreadPool* pool) {
  return std::string(what) + " n=" + std::to_string(s.n) + " m=" + std::to_string(s.m) + " k=" +
         std::to_string(s.k) + " threads=" + std::to_string(pool != nullptr ? pool->threads() : 1);
}

// (rows, cols, reduction) of each layout's product C = A·B (gemm.h's gemm_split).
GemmSplit split_of(Layout l, const Shape& s, std::size_t threads) {
  switch (l) {
    case Layout::kForward:
      return gemm_split(s.n, s.m, s.k, threads);
    case Layout::kDgrad:
      return gemm_split(s.n, s.k, s.m, threads);
    case Layout::kWgrad:
      return gemm_split(s.m, s.k, s.n, threads);
  }
  return GemmSplit::kPanels;
}

// Shapes that drive each way of splitting a product (gemm.cc) — checked below to cover all three — plus long
// reductions that take several K blocks, with ragged edges everywhere.
const Shape kSplitShapes[] = {{64, 256, 784},  {3000, 20, 100}, {40000, 10, 12}, {20000, 7, 130},
                              {5, 2000, 70},   {97, 61, 3001},  {1, 700, 9000}};

TEST_P(GemmTarget, EverySplitAndBlockingMatchesReferenceForAnyThreadCount) {
  std::mt19937 rng(7);
  ThreadPool two(2, ThreadPool::Split::kAlways), three(3, ThreadPool::Split::kAlways);
  std::set<GemmSplit> seen_two, seen_one;
  for (const Shape& s : kSplitShapes) {
    for (Layout l : kLayouts) {
      seen_one.insert(split_of(l, s, 1));
      seen_two.insert(split_of(l, s, 2));
      const Sizes z = sizes_of(l, s);
      const auto a = random_int8(z.a, rng), b = random_int8(z.b, rng);
      const auto base = check_against_ref(l, s, a, b, nullptr);
      for (ThreadPool* pool : {&two, &three}) {
        EXPECT_EQ(check_against_ref(l, s, a, b, pool), base) << describe(name_of(l), s, pool);
      }
    }
  }
  EXPECT_EQ(seen_two.size(), 3u) << "the shapes no longer reach every split with 2 threads";
  EXPECT_TRUE(seen_one.count(GemmSplit::kRows) == 1) << "no shape packs A by row blocks on one thread";
  EXPECT_TRUE(seen_one.count(GemmSplit::kReduction) == 0) << "one thread never splits the reduction";
}

// The forward epilogue (bias, ReLU) applied as tiles finish, in every split and with K blocks, against the
// reference product followed by the reference epilogue; biases at the int32 extremes make the saturation happen.
TEST_P(GemmTarget, ForwardEpilogueMatchesReferenceInEverySplit) {
  std::mt19937 rng(11);
  ThreadPool two(2, ThreadPool::Split::kAlways), three(3, ThreadPool::Split::kAlways);
  std::set<GemmSplit> seen;
  const Shape shapes[] = {{1, 1, 1},      {3, 5, 7},        {6, 70, 33},   {4, 3, 0},      {17, 33, 65},
                          {64, 256, 784}, {3000, 20, 100}, {5, 2000, 70}, {97, 61, 3001}, {1, 700, 9000},
                          {20000, 7, 130}};
  std::uniform_int_distribution<int32_t> any(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
  std::uniform_int_distribution<int32_t> small(-300000, 300000);
  for (const Shape& s : shapes) {
    seen.insert(split_of(Layout::kForward, s, 2));
    const auto x = random_int8(s.n * s.k, rng), w = random_int8(s.m * s.k, rng);
    const auto x4 = random_int4(s.n * s.k, rng), w4 = random_int4(s.m * s.k, rng);
    std::vector<int32_t> bias(s.m + 1);
    for (std::size_t j = 0; j < s.m; ++j) {
      const std::size_t pick = j % 5;
      bias[j] = pick == 0   ? std::numeric_limits<int32_t>::max()
                : pick == 1 ? std::numeric_limits<int32_t>::min()
                : pick == 2 ? any(rng)
                            : small(rng);
    }
    const PackedWeights packed = pack_weights_forward(w.data(), s.m, s.k, nullptr);
    const auto x4p = to_int4(x4, s.n, s.k), w4p = to_int4(w4, s.m, s.k);
    for (const GemmEpilogue ep :
         {GemmEpilogue{bias.data(), false}, GemmEpilogue{bias.data(), true}, GemmEpilogue{nullptr, true}}) {
      std::vector<int32_t> want(s.n * s.m), want4(s.n * s.m);
      ref::gemm_forward(x.data(), w.data(), want.data(), s.n, s.m, s.k);
      ref::gemm_epilogue(want.data(), s.n, s.m, ep);
      ref::gemm_forward(x4.data(), w4.data(), want4.data(), s.n, s.m, s.k);
      ref::gemm_epilogue(want4.data(), s.n, s.m, ep);
      const std::string what = std::string(ep.bias != nullptr ? " bias" : "") + (ep.relu ? " relu" : "");
      for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &two, &three}) {
        std::vector<int32_t> got(s.n * s.m + kGuard, kSentinel);
        gemm_forward(x.data(), w.data(), got.data(), s.n, s.m, s.k, pool, ep);
        expect_same(got, want, describe(("forward" + what).c_str(), s, pool));
        got.assign(s.n * s.m + kGuard, kSentinel);
        gemm_forward_packed(x.data(), packed, got.data(), s.n, pool, ep);
        expect_same(got, want, describe(("forward_packed" + what).c_str(), s, pool));
        got.assign(s.n * s.m + kGuard, kSentinel);
        gemm_forward_s4(x4p.data(), w4p.data(), got.data(), s.n, s.m, s.k, pool, ep);
        expect_same(got, want4, describe(("forward_s4" + what).c_str(), s, pool));
      }
    }
  }
  EXPECT_EQ(seen.size(), 3u) << "the shapes no longer reach every split of the forward product with 2 threads";
}

// ---- Packed weights ------------------------------------------------------------------------------------------

// forward / dgrad through pack_weights_* and the *_packed products, against the reference.
void check_packed(const Shape& s, const std::vector<int8_t>& x, const std::vector<int8_t>& dy,
                  const std::vector<int8_t>& w, ThreadPool* pool) {
  std::vector<int32_t> want(s.n * s.m), got(s.n * s.m + kGuard, kSentinel);
  const PackedWeights fw = pack_weights_forward(w.data(), s.m, s.k, pool);
  EXPECT_EQ(fw.use(), PackedWeights::Use::kForward);
  EXPECT_EQ(fw.m(), s.m);
  EXPECT_EQ(fw.k(), s.k);
  gemm_forward_packed(x.data(), fw, got.data(), s.n, pool);
  ref::gemm_forward(x.data(), w.data(), want.data(), s.n, s.m, s.k);
  expect_same(got, want, describe("forward_packed", s, pool));

  want.assign(s.n * s.k, 0);
  got.assign(s.n * s.k + kGuard, kSentinel);
  const PackedWeights dw = pack_weights_dgrad(w.data(), s.m, s.k, pool);
  EXPECT_EQ(dw.use(), PackedWeights::Use::kDgrad);
  gemm_dgrad_packed(dy.data(), dw, got.data(), s.n, pool);
  ref::gemm_dgrad(dy.data(), w.data(), want.data(), s.n, s.m, s.k);
  expect_same(got, want, describe("dgrad_packed", s, pool));
}

TEST_P(GemmTarget, PackedWeightsMatchReference) {
  const Shape shapes[] = {{1, 1, 1},     {3, 5, 7},    {17, 33, 65},   {64, 10, 784}, {31, 129, 257},
                          {6, 70, 33},   {4, 3, 0},    {0, 3, 4},      {3, 0, 4},     {20, 3, 40000},
                          {64, 256, 784}, {3000, 20, 100}, {5, 2000, 70}, {97, 61, 3001}};
  std::mt19937 rng(31);
  ThreadPool two(2, ThreadPool::Split::kAlways);
  for (const Shape& s : shapes) {
    const auto x = random_int8(s.n * s.k, rng), dy = random_int8(s.n * s.m, rng), w = random_int8(s.m * s.k, rng);
    check_packed(s, x, dy, w, nullptr);
    check_packed(s, x, dy, w, &two);
  }
}

TEST_P(GemmTarget, PackedWeightsAtMaximalReductionDoNotOverflow) {
  // As ExtremesAtMaximalReductionDoNotOverflow, through the packed path (the VNNI offset with prepacked B).
  const std::size_t r = kMaxReduction;
  for (const auto& [va, vb] : {std::pair<int8_t, int8_t>{-128, -128}, {127, -128}}) {
    const Shape fs{2, 3, r}, ds{2, r, 3};
    const std::vector<int8_t> x(fs.n * fs.k, va), wf(fs.m * fs.k, vb), dy(ds.n * ds.m, va), wd(ds.m * ds.k, vb);
    std::vector<int32_t> y(fs.n * fs.m), dx(ds.n * ds.k);
    gemm_forward_packed(x.data(), pack_weights_forward(wf.data(), fs.m, fs.k, nullptr), y.data(), fs.n, nullptr);
    gemm_dgrad_packed(dy.data(), pack_weights_dgrad(wd.data(), ds.m, ds.k, nullptr), dx.data(), ds.n, nullptr);
    const int64_t expected = static_cast<int64_t>(r) * va * vb;
    for (int32_t v : y) ASSERT_EQ(v, expected);
    for (int32_t v : dx) ASSERT_EQ(v, expected);
  }
}

// ---- int4 ------------------------------------------------------------------------------------------------------

void check_int4(Layout l, const Shape& s, const std::vector<int8_t>& a, const std::vector<int8_t>& b,
                ThreadPool* pool) {
  const Sizes z = sizes_of(l, s);
  std::vector<int32_t> want(z.c), got(z.c + kGuard, kSentinel);
  run_ref(l, a, b, want.data(), s);
  switch (l) {
    case Layout::kForward:
      gemm_forward_s4(to_int4(a, s.n, s.k).data(), to_int4(b, s.m, s.k).data(), got.data(), s.n, s.m, s.k, pool);
      break;
    case Layout::kDgrad:
      gemm_dgrad_s4(to_int4(a, s.n, s.m).data(), to_int4(b, s.m, s.k).data(), got.data(), s.n, s.m, s.k, pool);
      break;
    case Layout::kWgrad:
      gemm_wgrad_s4(to_int4(a, s.n, s.m).data(), to_int4(b, s.n, s.k).data(), got.data(), s.n, s.m, s.k, pool);
      break;
  }
  expect_same(got, want, describe(name_of(l), s, pool) + " (int4)");
}

TEST_P(GemmTarget, Int4OperandsMatchReference) {
  // Odd widths put a lone nibble at the end of every row; the split shapes reach every way of splitting.
  std::vector<Shape> shapes = {{1, 1, 1},   {3, 5, 7},   {17, 33, 65}, {31, 129, 257}, {6, 70, 33},
                               {2, 3, 129}, {4, 3, 0},   {3, 0, 4},    {0, 3, 4},      {33, 47, 17}};
  shapes.insert(shapes.end(), std::begin(kSplitShapes), std::end(kSplitShapes));
  std::mt19937 rng(4);
  ThreadPool two(2, ThreadPool::Split::kAlways);
  for (const Shape& s : shapes) {
    for (Layout l : kLayouts) {
      const Sizes z = sizes_of(l, s);
      const auto a = random_int4(z.a, rng), b = random_int4(z.b, rng);
      check_int4(l, s, a, b, nullptr);
      check_int4(l, s, a, b, &two);
    }
  }
}

TEST_P(GemmTarget, Int4PackedWeightsMatchReference) {
  const Shape shapes[] = {{3, 5, 7}, {17, 33, 65}, {64, 10, 784}, {6, 70, 33}, {3000, 20, 100}, {97, 61, 3001}};
  std::mt19937 rng(5);
  ThreadPool two(2, ThreadPool::Split::kAlways);
  for (const Shape& s : shapes) {
    for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &two}) {
      const auto x = random_int4(s.n * s.k, rng), dy = random_int4(s.n * s.m, rng), w = random_int4(s.m * s.k, rng);
      const auto w4 = to_int4(w, s.m, s.k);
      const PackedWeights fw = pack_weights_forward_s4(w4.data(), s.m, s.k, pool);
      const PackedWeights dw = pack_weights_dgrad_s4(w4.data(), s.m, s.k, pool);
      EXPECT_TRUE(fw.int4());
      std::vector<int32_t> want(s.n * s.m), got(s.n * s.m + kGuard, kSentinel);
      ref::gemm_forward(x.data(), w.data(), want.data(), s.n, s.m, s.k);
      gemm_forward_packed(x.data(), fw, got.data(), s.n, pool);  // int8 activations (W4A8)
      expect_same(got, want, describe("forward_packed, int4 weights", s, pool));
      got.assign(got.size(), kSentinel);
      gemm_forward_packed_s4(to_int4(x, s.n, s.k).data(), fw, got.data(), s.n, pool);  // W4A4
      expect_same(got, want, describe("forward_packed_s4", s, pool));

      want.assign(s.n * s.k, 0);
      got.assign(s.n * s.k + kGuard, kSentinel);
      ref::gemm_dgrad(dy.data(), w.data(), want.data(), s.n, s.m, s.k);
      gemm_dgrad_packed(dy.data(), dw, got.data(), s.n, pool);
      expect_same(got, want, describe("dgrad_packed, int4 weights", s, pool));
      got.assign(got.size(), kSentinel);
      gemm_dgrad_packed_s4(to_int4(dy, s.n, s.m).data(), dw, got.data(), s.n, pool);
      expect_same(got, want, describe("dgrad_packed_s4", s, pool));
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

TEST(GemmPacked, WeightsPackedForOneTargetWorkUnderEveryOther) {
  // The panel layout depends on the target; a product under another target falls back to the kept copy of W.
  const Shape s{13, 70, 150};
  std::mt19937 rng(8);
  const auto x = random_int8(s.n * s.k, rng), dy = random_int8(s.n * s.m, rng), w = random_int8(s.m * s.k, rng);
  for (const std::string& packer : target_names()) {
    PackedWeights fw, dw;
    {
      ForcedTarget forced(packer);
      ASSERT_TRUE(forced.ok());
      fw = pack_weights_forward(w.data(), s.m, s.k, nullptr);
      dw = pack_weights_dgrad(w.data(), s.m, s.k, nullptr);
      EXPECT_EQ(fw.target(), active_target().bits);
    }
    for (const std::string& runner : target_names()) {
      ForcedTarget forced(runner);
      ASSERT_TRUE(forced.ok());
      SCOPED_TRACE("packed under " + packer + ", run under " + runner);
      check_packed(s, x, dy, w, nullptr);  // fresh packing under `runner`: the reference path
      std::vector<int32_t> y(s.n * s.m), y_ref(s.n * s.m), dx(s.n * s.k), dx_ref(s.n * s.k);
      gemm_forward_packed(x.data(), fw, y.data(), s.n, nullptr);
      gemm_dgrad_packed(dy.data(), dw, dx.data(), s.n, nullptr);
      ref::gemm_forward(x.data(), w.data(), y_ref.data(), s.n, s.m, s.k);
      ref::gemm_dgrad(dy.data(), w.data(), dx_ref.data(), s.n, s.m, s.k);
      EXPECT_EQ(y, y_ref);
      EXPECT_EQ(dx, dx_ref);
    }
  }
}

TEST(GemmPacked, WeightsPackedForTheOtherProductAreRejected) {
  const std::vector<int8_t> w(12, 1), x(8, 1);
  std::vector<int32_t> out(16);
  const PackedWeights fw = pack_weights_forward(w.data(), 3, 4, nullptr);
  const PackedWeights dw = pack_weights_dgrad(w.data(), 3, 4, nullptr);
  EXPECT_THROW(gemm_dgrad_packed(x.data(), fw, out.data(), 2, nullptr), std::invalid_argument);
  EXPECT_THROW(gemm_forward_packed(x.data(), dw, out.data(), 2, nullptr), std::invalid_argument);
  EXPECT_THROW(gemm_forward_packed(x.data(), PackedWeights{}, out.data(), 2, nullptr), std::invalid_argument);
  EXPECT_TRUE(PackedWeights{}.empty());
  EXPECT_GE(fw.bytes(), w.size());
}

TEST(Int4, PackingRoundTripsEveryValueAndOddWidths) {
  std::mt19937 rng(3);
  for (std::size_t rows : {std::size_t{1}, std::size_t{2}, std::size_t{5}}) {
    for (std::size_t cols : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{15}, std::size_t{16},
                             std::size_t{17}, std::size_t{64}, std::size_t{101}}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " cols=" + std::to_string(cols));
      auto v = random_int4(rows * cols, rng);
      for (std::size_t i = 0; i < v.size() && i < 16; ++i) v[i] = static_cast<int8_t>(static_cast<int>(i) - 8);
      const std::size_t nbytes = rows * int4_row_bytes(cols);
      std::vector<uint8_t> packed(nbytes, 0xAA), packed_ref(nbytes, 0x55);
      pack_int4(v.data(), rows, cols, packed.data());
      ref::pack_int4(v.data(), rows, cols, packed_ref.data());
      EXPECT_EQ(packed, packed_ref);
      if (cols % 2 != 0) {
        for (std::size_t r = 0; r < rows; ++r) EXPECT_EQ(packed[r * int4_row_bytes(cols) + cols / 2] >> 4, 0);
      }
      std::vector<int8_t> back(rows * cols, 99), back_ref(rows * cols, 98);
      unpack_int4(packed.data(), rows, cols, back.data());
      ref::unpack_int4(packed.data(), rows, cols, back_ref.data());
      EXPECT_EQ(back, v);
      EXPECT_EQ(back_ref, v);
    }
  }
}

TEST(Int4, LayoutIsLowNibbleFirstTwosComplement) {
  const std::vector<int8_t> v = {1, -1, -8, 7, 0, -2, 5};
  std::vector<uint8_t> p(int4_row_bytes(v.size()));
  pack_int4(v.data(), 1, v.size(), p.data());
  EXPECT_EQ(p, (std::vector<uint8_t>{0xF1, 0x78, 0xE0, 0x05}));
  // Every byte value unpacks to its two nibbles.
  for (int byte = 0; byte < 256; ++byte) {
    const uint8_t b = static_cast<uint8_t>(byte);
    int8_t out[2];
    unpack_int4(&b, 1, 2, out);
    EXPECT_EQ(out[0], (byte & 0xF) >= 8 ? (byte & 0xF) - 16 : (byte & 0xF));
    EXPECT_EQ(out[1], (byte >> 4) >= 8 ? (byte >> 4) - 16 : (byte >> 4));
  }
}

TEST(ThreadPool, AdvisorSplitsOnlyWhenTheSavingExceedsTheMeasuredOverhead) {
  SplitAdvisor a(2);
  EXPECT_TRUE(a.worth_splitting(100.0));  // nothing measured yet: split, and measure
  EXPECT_TRUE(a.spin_workers());
  // A call that took its whole work on one thread (the other worker ran late): overhead 1e6 − 1e6/2, taken at
  // once; a faster call afterwards only halves the distance.
  a.observe(1e6, 1e6);
  EXPECT_DOUBLE_EQ(a.overhead_ns(), 5e5);
  a.observe(1e5, 1e5);
  EXPECT_DOUBLE_EQ(a.overhead_ns(), 0.5 * (5e5 + 5e4));
  a.observe(1e6, 1e6);
  EXPECT_DOUBLE_EQ(a.overhead_ns(), 5e5);
  EXPECT_TRUE(a.worth_splitting(2e6));  // saves 1e6 > 5e5
  EXPECT_FALSE(a.spin_workers()) << "a contended machine: workers sleep between regions";
  // Work that would save 5e4 < 5e5 is refused, but once kProbeRatio × 5e5 of it has been refused, one call
  // probes: 1e5 a call → a probe every 80 calls.
  int yes = 0;
  for (int i = 0; i < 160; ++i) yes += a.worth_splitting(1e5) ? 1 : 0;
  EXPECT_EQ(yes, 2) << "only the probes split";
  // Calls that split perfectly bring the estimate back down, and small work splits again.
  for (int i = 0; i < 40; ++i) a.observe(5e4, 1e5);
  EXPECT_LT(a.overhead_ns(), 1.0);
  EXPECT_TRUE(a.worth_splitting(1e3));
  EXPECT_TRUE(a.spin_workers()) << "a quiet machine: workers spin between regions";
  SplitAdvisor one(1);
  EXPECT_FALSE(one.worth_splitting(1e12));

  ThreadPool single(1), always(2, ThreadPool::Split::kAlways), measured(2);
  EXPECT_FALSE(single.worth_splitting(1e12));
  EXPECT_TRUE(always.worth_splitting(0.0));
  EXPECT_TRUE(measured.worth_splitting(1e12));
  // A parallel call feeds the advisor: the overhead estimate becomes a finite, non-negative time.
  measured.parallel_for(8, 1, [](std::size_t, std::size_t) {});
  EXPECT_GE(measured.advisor().overhead_ns(), 0.0);
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
