// The strided and batched int8 GEMMs (gemm.h, GemmBatch) against their scalar references, on every Highway target
// this machine can run: matrices read in place from per-head activations and from padded stacks, the cells between
// and around the output matrices left alone, the same bits for any thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/thread_pool.h"
#include "tests/gemm_test_util.h"
#include "tests/target_test_util.h"

namespace qtrain::kernels {
namespace {

enum class Layout { kForward, kDgrad, kWgrad };
constexpr Layout kLayouts[] = {Layout::kForward, Layout::kDgrad, Layout::kWgrad};
const char* name_of(Layout l) { return l == Layout::kForward ? "forward" : l == Layout::kDgrad ? "dgrad" : "wgrad"; }

struct Dims {
  std::size_t rows, cols;
};
// {first operand, second operand, output} matrix dimensions of each layout (gemm.h).
struct LayoutDims {
  Dims a, b, c;
};
LayoutDims dims_of(Layout l, std::size_t n, std::size_t m, std::size_t k) {
  switch (l) {
    case Layout::kForward:
      return {{n, k}, {m, k}, {n, m}};  // X, W → Y
    case Layout::kDgrad:
      return {{n, m}, {m, k}, {n, k}};  // dY, W → dX
    case Layout::kWgrad:
      return {{n, m}, {n, k}, {m, k}};  // dY, X → dW
  }
  return {};
}

// How a test lays out one operand's outer × inner matrices: side by side in the columns of one tensor per outer
// index (a [tokens × heads·d] activation read per head) or stacked by rows; `pad` extra columns make ld > row length.
struct Placement {
  bool heads;
  std::size_t pad;
};

MatrixStrides strides_of(const Placement& p, std::size_t inner, const Dims& d) {
  if (p.heads) {
    const std::size_t ld = inner * d.cols + p.pad;
    return {ld, d.rows * ld, d.cols};
  }
  const std::size_t ld = d.cols + p.pad;
  return {ld, inner * d.rows * ld, d.rows * ld};
}

// Elements an operand's buffer needs: up to the end of its last matrix's last row.
std::size_t extent(const MatrixStrides& s, std::size_t outer, std::size_t inner, const Dims& d) {
  if (outer * inner == 0 || d.rows == 0) return 1;
  return (outer - 1) * s.outer_stride + (inner - 1) * s.inner_stride + (d.rows - 1) * s.ld + d.cols + 1;
}

void run(Layout l, const int8_t* a, const int8_t* b, int32_t* c, std::size_t n, std::size_t m, std::size_t k,
         const GemmBatch& batch, ThreadPool* pool) {
  switch (l) {
    case Layout::kForward:
      return gemm_forward_batched(a, b, c, n, m, k, batch, pool);
    case Layout::kDgrad:
      return gemm_dgrad_batched(a, b, c, n, m, k, batch, pool);
    case Layout::kWgrad:
      return gemm_wgrad_batched(a, b, c, n, m, k, batch, pool);
  }
}

void run_ref(Layout l, const int8_t* a, const int8_t* b, int32_t* c, std::size_t n, std::size_t m, std::size_t k,
             const GemmBatch& batch) {
  switch (l) {
    case Layout::kForward:
      return ref::gemm_forward_batched(a, b, c, n, m, k, batch);
    case Layout::kDgrad:
      return ref::gemm_dgrad_batched(a, b, c, n, m, k, batch);
    case Layout::kWgrad:
      return ref::gemm_wgrad_batched(a, b, c, n, m, k, batch);
  }
}

// One batched product set up in buffers: operands random (or constant), output sentinel-filled.
struct Case {
  Layout layout;
  std::size_t n, m, k, outer, inner;
  Placement pa, pb, pc;
  std::string describe() const {
    return std::string(name_of(layout)) + " n=" + std::to_string(n) + " m=" + std::to_string(m) +
           " k=" + std::to_string(k) + " batch=" + std::to_string(outer) + "x" + std::to_string(inner) +
           (pa.heads ? " A per head" : " A stacked") + (pb.heads ? ", B per head" : ", B stacked") +
           (pc.heads ? ", C per head" : ", C stacked");
  }
};

struct Buffers {
  GemmBatch batch;
  std::vector<int8_t> a, b;
  std::size_t c_size = 0;
};

Buffers make_buffers(const Case& t, std::mt19937& rng) {
  const LayoutDims d = dims_of(t.layout, t.n, t.m, t.k);
  Buffers out;
  out.batch = GemmBatch{t.outer, t.inner, strides_of(t.pa, t.inner, d.a), strides_of(t.pb, t.inner, d.b),
                        strides_of(t.pc, t.inner, d.c)};
  out.a = random_int8(extent(out.batch.a, t.outer, t.inner, d.a), rng);
  out.b = random_int8(extent(out.batch.b, t.outer, t.inner, d.b), rng);
  out.c_size = extent(out.batch.c, t.outer, t.inner, d.c);
  return out;
}

// Which cells of the output buffer belong to an output matrix.
std::vector<bool> output_cells(const Case& t, const GemmBatch& batch, std::size_t size) {
  const Dims c = dims_of(t.layout, t.n, t.m, t.k).c;
  std::vector<bool> mine(size, false);
  for (std::size_t o = 0; o < t.outer; ++o)
    for (std::size_t i = 0; i < t.inner; ++i)
      for (std::size_t r = 0; r < c.rows; ++r)
        for (std::size_t col = 0; col < c.cols; ++col)
          mine[o * batch.c.outer_stride + i * batch.c.inner_stride + r * batch.c.ld + col] = true;
  return mine;
}

// Runs the kernel and the reference into sentinel-filled buffers: every output cell equal, every other cell
// untouched. Returns the kernel's buffer.
std::vector<int32_t> check(const Case& t, const Buffers& buf, ThreadPool* pool) {
  std::vector<int32_t> got(buf.c_size, kSentinel), want(buf.c_size, kSentinel);
  run(t.layout, buf.a.data(), buf.b.data(), got.data(), t.n, t.m, t.k, buf.batch, pool);
  run_ref(t.layout, buf.a.data(), buf.b.data(), want.data(), t.n, t.m, t.k, buf.batch);
  const std::vector<bool> mine = output_cells(t, buf.batch, buf.c_size);
  const std::string what = t.describe() + " threads=" + std::to_string(pool != nullptr ? pool->threads() : 1);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < buf.c_size && bad < 5; ++i) {
    if (got[i] != want[i]) {
      ++bad;
      ADD_FAILURE() << what << ": cell " << i << (mine[i] ? "" : " (not an output)") << " is " << got[i]
                    << ", reference " << want[i];
    }
  }
  return got;
}

class GemmBatchedTarget : public PerTargetTest {};

TEST_P(GemmBatchedTarget, MatchesReferenceForEveryLayoutBatchAndPlacement) {
  // Odd sizes (remainders of the register tile and of the reduction groups), a single matrix and several, one and
  // two batch levels, ld equal to and beyond the row length.
  struct Size {
    std::size_t n, m, k, outer, inner;
  };
  const Size sizes[] = {{1, 1, 1, 1, 1},  {5, 7, 3, 1, 1},   {17, 33, 65, 1, 3}, {13, 9, 31, 2, 3},
                        {3, 2, 70, 5, 1}, {40, 21, 9, 2, 2}, {0, 3, 4, 2, 2},    {4, 3, 0, 2, 1}};
  const Placement placements[] = {{false, 0}, {true, 0}, {false, 5}, {true, 3}};
  std::mt19937 rng(21);
  ThreadPool two(2, ThreadPool::Split::kAlways);
  for (const Size& s : sizes) {
    for (Layout l : kLayouts) {
      for (std::size_t p = 0; p < std::size(placements); ++p) {
        // Each operand gets a different placement, so every combination of per-head and stacked appears.
        const Case t{
            l, s.n, s.m, s.k, s.outer, s.inner, placements[p], placements[(p + 1) % 4], placements[(p + 2) % 4]};
        const Buffers buf = make_buffers(t, rng);
        const auto base = check(t, buf, nullptr);
        EXPECT_EQ(check(t, buf, &two), base) << t.describe();
      }
    }
  }
}

TEST_P(GemmBatchedTarget, ReferenceAgreesWithTheDenseReferencePerMatrix) {
  // The batched reference, matrix by matrix, against the dense one on copies of the matrices: the test's
  // definition of the batch is the header's.
  const Case t{Layout::kForward, 6, 5, 7, 2, 3, {true, 2}, {false, 1}, {true, 4}};
  std::mt19937 rng(5);
  const Buffers buf = make_buffers(t, rng);
  std::vector<int32_t> y(buf.c_size, kSentinel);
  ref::gemm_forward_batched(buf.a.data(), buf.b.data(), y.data(), t.n, t.m, t.k, buf.batch);
  for (std::size_t o = 0; o < t.outer; ++o) {
    for (std::size_t i = 0; i < t.inner; ++i) {
      std::vector<int8_t> x(t.n * t.k), w(t.m * t.k);
      const int8_t* xa = buf.a.data() + o * buf.batch.a.outer_stride + i * buf.batch.a.inner_stride;
      const int8_t* wb = buf.b.data() + o * buf.batch.b.outer_stride + i * buf.batch.b.inner_stride;
      for (std::size_t r = 0; r < t.n; ++r)
        std::copy(xa + r * buf.batch.a.ld, xa + r * buf.batch.a.ld + t.k, &x[r * t.k]);
      for (std::size_t r = 0; r < t.m; ++r)
        std::copy(wb + r * buf.batch.b.ld, wb + r * buf.batch.b.ld + t.k, &w[r * t.k]);
      std::vector<int32_t> dense(t.n * t.m);
      ref::gemm_forward(x.data(), w.data(), dense.data(), t.n, t.m, t.k);
      const int32_t* yc = y.data() + o * buf.batch.c.outer_stride + i * buf.batch.c.inner_stride;
      for (std::size_t r = 0; r < t.n; ++r)
        for (std::size_t c = 0; c < t.m; ++c) ASSERT_EQ(yc[r * buf.batch.c.ld + c], dense[r * t.m + c]);
    }
  }
}

TEST_P(GemmBatchedTarget, AttentionProductsReadHeadsInPlace) {
  // S = Q·Kᵀ per (sequence, head) from [tokens × heads·d] activations into a stacked [batch·heads·seq × seq], then
  // O = P·V per head from that stack back into a [tokens × heads·d] output; sizes off every tile multiple, and
  // enough matrices (2·3) and work that two threads split over (matrix × row block) tasks.
  const std::size_t batch = 2, heads = 3, seq = 71, d = 37;
  const Case qk{Layout::kForward, seq, seq, d, batch, heads, {true, 0}, {true, 0}, {false, 0}};
  const Case pv{Layout::kDgrad, seq, seq, d, batch, heads, {false, 0}, {true, 0}, {true, 0}};
  std::mt19937 rng(77);
  ThreadPool two(2, ThreadPool::Split::kAlways), three(3, ThreadPool::Split::kAlways);
  for (const Case* t : {&qk, &pv}) {
    const Buffers buf = make_buffers(*t, rng);
    const auto base = check(*t, buf, nullptr);
    EXPECT_EQ(check(*t, buf, &two), base) << t->describe();
    EXPECT_EQ(check(*t, buf, &three), base) << t->describe();
  }
}

TEST_P(GemmBatchedTarget, ExtremesAtMaximalReductionDoNotOverflow) {
  // kMaxReduction products of ±128·±128 in each matrix of a batch of two, rows padded past their length.
  const std::size_t r = kMaxReduction;
  for (const auto& [va, vb] : {std::pair<int8_t, int8_t>{-128, -128}, {127, -128}}) {
    for (Layout l : kLayouts) {
      const std::size_t n = l == Layout::kWgrad ? r : 2, m = l == Layout::kDgrad ? r : 3,
                        k = l == Layout::kForward ? r : 2;
      const Case t{l, n, m, k, 2, 1, {false, 3}, {false, 1}, {false, 2}};
      std::mt19937 rng(1);
      Buffers buf = make_buffers(t, rng);
      std::fill(buf.a.begin(), buf.a.end(), va);
      std::fill(buf.b.begin(), buf.b.end(), vb);
      const auto got = check(t, buf, nullptr);
      const std::vector<bool> mine = output_cells(t, buf.batch, buf.c_size);
      const int64_t expected = static_cast<int64_t>(r) * va * vb;
      for (std::size_t i = 0; i < got.size(); ++i) {
        if (mine[i]) {
          ASSERT_EQ(got[i], expected) << t.describe();
        }
      }
    }
  }
}

TEST_P(GemmBatchedTarget, BitIdenticalForAnyThreadCountAndBatchSplit) {
  // Batches smaller than, equal to and larger than the thread count (each matrix split over its tiles, or the
  // batch over matrix × row-block tasks), with matrices large enough to be split.
  struct Size {
    std::size_t n, m, k, outer, inner;
  };
  const Size sizes[] = {{300, 70, 64, 1, 1}, {300, 70, 64, 1, 2}, {97, 45, 300, 1, 3}, {129, 64, 40, 4, 5}};
  std::mt19937 rng(9);
  ThreadPool one(1), two(2, ThreadPool::Split::kAlways), three(3, ThreadPool::Split::kAlways);
  for (const Size& s : sizes) {
    for (Layout l : kLayouts) {
      const Case t{l, s.n, s.m, s.k, s.outer, s.inner, {true, 1}, {false, 0}, {false, 3}};
      const Buffers buf = make_buffers(t, rng);
      const auto base = check(t, buf, nullptr);
      for (ThreadPool* pool : {&one, &two, &three}) EXPECT_EQ(check(t, buf, pool), base) << t.describe();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, GemmBatchedTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(GemmBatched, LeadingDimensionShorterThanARowIsRefused) {
  const std::vector<int8_t> a(64, 1), b(64, 1);
  std::vector<int32_t> c(64);
  const GemmBatch ok{.a = {.ld = 4}, .b = {.ld = 4}, .c = {.ld = 3}};
  EXPECT_NO_THROW(gemm_forward_batched(a.data(), b.data(), c.data(), 2, 3, 4, ok, nullptr));
  GemmBatch bad = ok;
  bad.a.ld = 3;
  try {
    gemm_forward_batched(a.data(), b.data(), c.data(), 2, 3, 4, bad, nullptr);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("X has leading dimension 3, shorter than its rows of 4"), std::string::npos)
        << e.what();
  }
  bad = ok;
  bad.c.ld = 2;
  EXPECT_THROW(gemm_forward_batched(a.data(), b.data(), c.data(), 2, 3, 4, bad, nullptr), std::invalid_argument);
  bad = ok;
  bad.b.ld = 2;  // dgrad's W rows are k = 3 long
  EXPECT_THROW(gemm_dgrad_batched(a.data(), b.data(), c.data(), 2, 4, 3, bad, nullptr), std::invalid_argument);
  bad = {.a = {.ld = 3}, .b = {.ld = 4}, .c = {.ld = 4}};  // wgrad's dY rows are m = 4 long
  EXPECT_THROW(gemm_wgrad_batched(a.data(), b.data(), c.data(), 2, 4, 4, bad, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace qtrain::kernels
