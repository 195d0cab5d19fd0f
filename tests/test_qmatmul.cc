// QMatMul (engine/ops/qmatmul.h): forward and both input gradients against a reference built from the same quantized
// operands (int64 forward, exact doubles for the gradients), on attention's layouts; a Var used as both operands gets
// the sum; the bits do not depend on the thread count or the SIMD target; bad shapes are refused naming both.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/engine/ops/qmatmul.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/shiftquant.h"
#include "tests/op_test_util.h"
#include "tests/target_test_util.h"

namespace qtrain {
namespace {

// Element (r, c) of matrix j of a tensor holding cfg's matrices (rows × cols each) in `layout`: its flat index.
std::size_t index_of(const Tensor& t, MatrixLayout layout, const QMatMulConfig& cfg, std::size_t rows, std::size_t cols,
                     std::size_t j, std::size_t r, std::size_t c) {
  if (layout == MatrixLayout::kStacked) return (j * rows + r) * t.cols() + c;
  return (j / cfg.heads * rows + r) * t.cols() + j % cfg.heads * cols + c;
}

// One product's matrix sizes: A_j n × k, B_j k × m (m × k transposed), Y_j n × m.
struct Dims {
  std::size_t n, k, m;
};

struct Case {
  std::string name;
  QMatMulConfig cfg;
  Dims d;
};

// A random int32 tensor (one exponent) holding cfg's matrices, rows × cols each, in `layout`.
Tensor random_operand(const QMatMulConfig& cfg, MatrixLayout layout, std::size_t rows, std::size_t cols,
                      uint64_t seed) {
  const std::size_t count = cfg.batch * cfg.heads;
  const bool stacked = layout == MatrixLayout::kStacked;
  return random_i32((stacked ? count : cfg.batch) * rows, (stacked ? 1 : cfg.heads) * cols, 1 << 20, -20, seed);
}

// B_j's element on the reduction index p and output column c, wherever transpose_b puts it.
std::size_t b_index(const Tensor& b, const Case& t, std::size_t j, std::size_t p, std::size_t c) {
  return t.cfg.transpose_b ? index_of(b, t.cfg.b, t.cfg, t.d.m, t.d.k, j, c, p)
                           : index_of(b, t.cfg.b, t.cfg, t.d.k, t.d.m, j, p, c);
}

// Quantizes both operands as QMatMul does, runs it with a known dY, and checks Y, dA and dB against the reference.
void check_against_reference(const Case& t, bool same_var = false) {
  SCOPED_TRACE(t.name);
  const QMatMulConfig& cfg = t.cfg;
  const Dims& d = t.d;
  const std::size_t count = cfg.batch * cfg.heads;
  auto a = var(random_operand(cfg, cfg.a, d.n, d.k, 11));
  auto b = same_var ? a : var(random_operand(cfg, cfg.b, cfg.transpose_b ? d.m : d.k, cfg.transpose_b ? d.k : d.m, 12));
  const Tensor aq = quantize_activation(a->value, cfg.a_bits, true);
  const Tensor bq = quantize_activation(b->value, cfg.b_bits, true);
  Tape tape;
  const StepContext ctx{nullptr, &tape, 5, 7};
  const uint32_t layer = 4;
  VarPtr y = qmatmul(ctx, layer, cfg, a, b);

  // Forward: the exact int64 sums of the quantized operands, at e_a + e_b.
  ASSERT_EQ(y->value.exponent(), aq.exponent() + bq.exponent());
  const int8_t* qa = aq.data<int8_t>();
  const int8_t* qb = bq.data<int8_t>();
  for (std::size_t j = 0; j < count; ++j)
    for (std::size_t i = 0; i < d.n; ++i)
      for (std::size_t c = 0; c < d.m; ++c) {
        int64_t want = 0;
        for (std::size_t p = 0; p < d.k; ++p)
          want += int64_t{qa[index_of(aq, cfg.a, cfg, d.n, d.k, j, i, p)]} * qb[b_index(bq, t, j, p, c)];
        ASSERT_EQ(y->value.data<int32_t>()[index_of(y->value, cfg.y, cfg, d.n, d.m, j, i, c)], want)
            << "Y matrix " << j << " (" << i << ", " << c << ")";
      }

  // Backward with a known dY, quantized by the reference from the op's stream: q·2^(e0 − k_c) per Y column.
  const Tensor dy = random_i32(y->value.rows(), y->value.cols(), 1 << 22, -30, 3);
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  quant::ShiftQuantized g;
  quant::shiftquant(dy.data<int32_t>(), dy.rows(), dy.cols(), dy.exponent(), {cfg.grad_bits, cfg.grad_groups},
                    ctx.rounding_rng(layer, cfg.grad_slot), &g);
  const auto dyq = [&](std::size_t j, std::size_t i, std::size_t c) {
    const std::size_t at = index_of(dy, cfg.y, cfg, d.n, d.m, j, i, c);
    return std::ldexp(double(g.q[at]), g.channel_exponent(at % dy.cols()));
  };
  // da = Q_g(dy)·Q(b)ᵀ and db = Q(a)ᵀ·Q_g(dy) (transposed B: its transpose), exact in double (|terms| < 2^21, few).
  std::vector<double> da(a->value.size(), 0.0), db(b->value.size(), 0.0);
  for (std::size_t j = 0; j < count; ++j)
    for (std::size_t i = 0; i < d.n; ++i)
      for (std::size_t c = 0; c < d.m; ++c)
        for (std::size_t p = 0; p < d.k; ++p) {
          const std::size_t ai = index_of(aq, cfg.a, cfg, d.n, d.k, j, i, p), bi = b_index(bq, t, j, p, c);
          da[ai] += dyq(j, i, c) * std::ldexp(double(qb[bi]), bq.exponent());
          db[bi] += dyq(j, i, c) * std::ldexp(double(qa[ai]), aq.exponent());
        }
  if (same_var) {
    for (std::size_t i = 0; i < da.size(); ++i) da[i] += db[i];
  }
  ASSERT_TRUE(a->has_grad);
  for (std::size_t i = 0; i < da.size(); ++i)
    ASSERT_EQ(std::ldexp(double(a->grad.data<int32_t>()[i]), a->grad.exponent()), da[i]) << "dA element " << i;
  if (same_var) return;
  ASSERT_TRUE(b->has_grad);
  for (std::size_t i = 0; i < db.size(); ++i)
    ASSERT_EQ(std::ldexp(double(b->grad.data<int32_t>()[i]), b->grad.exponent()), db[i]) << "dB element " << i;
}

QMatMulConfig attention_config(std::size_t batch, std::size_t heads) {
  QMatMulConfig cfg;
  cfg.batch = batch;
  cfg.heads = heads;
  return cfg;
}

// Q·Kᵀ: Q and K per head in [tokens × heads·d], scores stacked [batch·heads·seq × seq].
Case scores_case(std::size_t batch, std::size_t heads, std::size_t seq, std::size_t d) {
  Case t{"scores Q·Kᵀ", attention_config(batch, heads), {seq, d, seq}};
  t.cfg.a = t.cfg.b = MatrixLayout::kPerHead;
  t.cfg.transpose_b = true;
  return t;
}

// P·V: probabilities stacked, V and the output per head.
Case values_case(std::size_t batch, std::size_t heads, std::size_t seq, std::size_t d) {
  Case t{"values P·V", attention_config(batch, heads), {seq, seq, d}};
  t.cfg.b = t.cfg.y = MatrixLayout::kPerHead;
  t.cfg.grad_slot = kSecondMatmulGradSlot;
  return t;
}

TEST(QMatMul, AttentionProductsMatchTheReference) {
  Case scores = scores_case(2, 3, 7, 5);
  scores.cfg.a_bits = 6;
  scores.cfg.grad_bits = 4;
  scores.cfg.grad_groups = 3;  // three power-of-two groups over the 7 score columns
  check_against_reference(scores);
  Case values = values_case(2, 3, 7, 5);
  values.cfg.b_bits = 4;
  values.cfg.grad_bits = 6;
  values.cfg.grad_groups = 2;
  check_against_reference(values);
}

TEST(QMatMul, SingleAndStackedMatricesMatchTheReference) {
  Case one{"one matrix", QMatMulConfig{}, {9, 6, 4}};
  check_against_reference(one);
  Case stacked{"stacked, Bᵀ", attention_config(3, 1), {5, 8, 3}};
  stacked.cfg.transpose_b = true;
  stacked.cfg.y = MatrixLayout::kPerHead;  // with one head, per head is stacked by sequence
  check_against_reference(stacked);
}

TEST(QMatMul, AnInputUsedAsBothOperandsGetsBothGradients) {
  // Y = X·Xᵀ per head (a Gram matrix): dX = dA + dB.
  Case gram = scores_case(2, 2, 6, 6);
  gram.name = "X·Xᵀ";
  check_against_reference(gram, /*same_var=*/true);
}

TEST(QMatMul, InputsWithoutGradientGetNone) {
  const Case t = values_case(1, 2, 4, 3);
  auto a = var(random_operand(t.cfg, t.cfg.a, 4, 4, 1));
  auto b = var(random_operand(t.cfg, t.cfg.b, 4, 3, 2));
  b->requires_grad = false;
  Tape tape;
  const StepContext ctx{nullptr, &tape, 1, 1};
  VarPtr y = qmatmul(ctx, 0, t.cfg, a, b);
  y->grad = random_i32(y->value.rows(), y->value.cols(), 1000, -10, 4);
  y->has_grad = true;
  tape.backward();
  EXPECT_TRUE(a->has_grad);
  EXPECT_FALSE(b->has_grad);
  // Neither input needs a gradient: nothing is recorded.
  a->requires_grad = false;
  Tape none;
  qmatmul(StepContext{nullptr, &none, 1, 1}, 0, t.cfg, a, b);
  EXPECT_EQ(none.size(), 0u);
}

TEST(QMatMul, GradientSlotsDrawTheirOwnRounding) {
  // The same product with the layer's two QMatMul slots: different stochastic rounding of dY, different dA.
  Case t = values_case(1, 2, 16, 8);
  t.cfg.grad_bits = 3;
  std::vector<std::vector<int32_t>> grads;
  for (const uint32_t slot : {kMatmulGradSlot, kSecondMatmulGradSlot}) {
    t.cfg.grad_slot = slot;
    auto a = var(random_operand(t.cfg, t.cfg.a, 16, 16, 1));
    auto b = var(random_operand(t.cfg, t.cfg.b, 16, 8, 2));
    Tape tape;
    VarPtr y = qmatmul(StepContext{nullptr, &tape, 1, 1}, 2, t.cfg, a, b);
    y->grad = random_i32(y->value.rows(), y->value.cols(), 1 << 20, -20, 3);
    y->has_grad = true;
    tape.backward();
    grads.emplace_back(a->grad.data<int32_t>(), a->grad.data<int32_t>() + a->grad.size());
  }
  EXPECT_NE(grads[0], grads[1]);
}

// Y, dA, dB of one forward and backward, as bits.
struct Outcome {
  std::vector<int32_t> y, da, db;
  int ey, eda, edb;
  bool operator==(const Outcome& o) const {
    return y == o.y && da == o.da && db == o.db && ey == o.ey && eda == o.eda && edb == o.edb;
  }
};

Outcome run_once(const Case& t, kernels::ThreadPool* pool) {
  const bool tb = t.cfg.transpose_b;
  auto a = var(random_operand(t.cfg, t.cfg.a, t.d.n, t.d.k, 21));
  auto b = var(random_operand(t.cfg, t.cfg.b, tb ? t.d.m : t.d.k, tb ? t.d.k : t.d.m, 22));
  Tape tape;
  VarPtr y = qmatmul(StepContext{pool, &tape, 9, 3}, 1, t.cfg, a, b);
  Outcome r{{y->value.data<int32_t>(), y->value.data<int32_t>() + y->value.size()}, {}, {}, y->value.exponent(), 0, 0};
  y->grad = random_i32(y->value.rows(), y->value.cols(), 1 << 24, -24, 23);
  y->has_grad = true;
  tape.backward();
  r.da.assign(a->grad.data<int32_t>(), a->grad.data<int32_t>() + a->grad.size());
  r.db.assign(b->grad.data<int32_t>(), b->grad.data<int32_t>() + b->grad.size());
  r.eda = a->grad.exponent();
  r.edb = b->grad.exponent();
  return r;
}

TEST(QMatMul, BitIdenticalForAnyThreadCountAndTarget) {
  // Large enough (2·4 heads of 64×64×64) that two threads split every product.
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways);
  for (const Case& t : {scores_case(2, 4, 64, 64), values_case(2, 4, 64, 64)}) {
    const Outcome base = run_once(t, nullptr);
    for (const std::string& target : kernels::target_names()) {
      kernels::ForcedTarget forced(target);
      ASSERT_TRUE(forced.ok());
      for (kernels::ThreadPool* pool : {static_cast<kernels::ThreadPool*>(nullptr), &two}) {
        EXPECT_TRUE(run_once(t, pool) == base)
            << t.name << " on " << target << " with " << (pool != nullptr ? pool->threads() : 1) << " threads";
      }
    }
  }
}

// The message of what qmatmul throws for these operands.
template <typename E>
std::string error_of(const QMatMulConfig& cfg, const VarPtr& a, const VarPtr& b) {
  try {
    qmatmul(StepContext{}, 0, cfg, a, b);
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "qmatmul accepted " << a->value.describe() << " and " << b->value.describe();
  return "";
}

TEST(QMatMul, BadShapesAreRefusedNamingBothShapes) {
  const auto expect_both = [](const std::string& msg, const VarPtr& a, const VarPtr& b) {
    EXPECT_NE(msg.find(a->value.describe()), std::string::npos) << msg;
    EXPECT_NE(msg.find(b->value.describe()), std::string::npos) << msg;
  };
  // The reduction does not match: A_j 9 × 6 and B_j 5 × 4.
  auto a = var(random_i32(9, 6, 100, 0, 1)), b = var(random_i32(5, 4, 100, 0, 2));
  std::string msg = error_of<std::invalid_argument>(QMatMulConfig{}, a, b);
  expect_both(msg, a, b);
  EXPECT_NE(msg.find("A_j is 9 × 6, B_j is 5 × 4"), std::string::npos) << msg;
  // Per-head rows that do not divide into the batch's sequences.
  const Case t = scores_case(2, 3, 7, 5);
  auto q = var(random_i32(14, 15, 100, 0, 3)), k = var(random_i32(13, 15, 100, 0, 4));
  msg = error_of<std::invalid_argument>(t.cfg, q, k);
  expect_both(msg, q, k);
  EXPECT_NE(msg.find("do not divide"), std::string::npos) << msg;
  // A reduction beyond kMaxReduction would overflow the int32 accumulators.
  auto wide = var(random_i32(1, kernels::kMaxReduction + 1, 100, 0, 5));
  auto tall = var(random_i32(kernels::kMaxReduction + 1, 1, 100, 0, 6));
  msg = error_of<std::invalid_argument>(QMatMulConfig{}, wide, tall);
  expect_both(msg, wide, tall);
  EXPECT_NE(msg.find("kMaxReduction"), std::string::npos) << msg;
}

TEST(QMatMul, BadConfigurationsAreUsageErrors) {
  auto a = var(random_i32(4, 4, 100, 0, 1));
  QMatMulConfig cfg;
  cfg.a_bits = 9;
  EXPECT_THROW(qmatmul(StepContext{}, 0, cfg, a, a), UsageError);
  cfg = {};
  cfg.grad_bits = 4;
  cfg.grad_groups = 6;  // (2^3 − 1)·2^5 > 127
  EXPECT_THROW(qmatmul(StepContext{}, 0, cfg, a, a), UsageError);
  cfg = {};
  cfg.heads = 0;
  EXPECT_NE(error_of<UsageError>(cfg, a, a).find("at least 1"), std::string::npos);
  cfg = {};
  cfg.grad_slot = 4;
  EXPECT_NE(error_of<UsageError>(cfg, a, a).find("0..3"), std::string::npos);
}

}  // namespace
}  // namespace qtrain
