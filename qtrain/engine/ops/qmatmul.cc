#include "qtrain/engine/ops/qmatmul.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

void QMatMulConfig::validate() const {
  if (batch < 1 || heads < 1)
    throw UsageError("QMatMul batch " + std::to_string(batch) + " × heads " + std::to_string(heads) +
                     ": both must be at least 1");
  quant::signed_range(a_bits);  // 2..8
  quant::signed_range(b_bits);
  quant::validate(quant::ShiftQuantConfig{grad_bits, grad_groups});
  if (grad_slot > 3)
    throw UsageError("QMatMul gradient slot " + std::to_string(grad_slot) + " out of range 0..3 (autograd.h)");
}

namespace {

const char* name_of(MatrixLayout l) { return l == MatrixLayout::kStacked ? "stacked" : "per head"; }

// The matrices of one operand or output: their size, and where they sit in the tensor (kernels::GemmBatch).
struct Matrices {
  std::size_t rows = 0, cols = 0;
  kernels::MatrixStrides strides;
};

// How a tensor [rows × cols] in `layout` holds cfg's batch·heads matrices; false when its shape does not divide.
bool matrices_of(const Tensor& t, MatrixLayout layout, const QMatMulConfig& cfg, Matrices* out) {
  const bool stacked = layout == MatrixLayout::kStacked;
  const std::size_t row_parts = stacked ? cfg.batch * cfg.heads : cfg.batch, col_parts = stacked ? 1 : cfg.heads;
  if (t.rows() % row_parts != 0 || t.cols() % col_parts != 0) return false;
  out->rows = t.rows() / row_parts;
  out->cols = t.cols() / col_parts;
  const std::size_t ld = t.cols();
  out->strides = stacked ? kernels::MatrixStrides{ld, cfg.heads * out->rows * ld, out->rows * ld}
                         : kernels::MatrixStrides{ld, out->rows * ld, out->cols};
  return true;
}

// The same for a tensor of matrices rows × cols to be made in `layout`: its shape.
Matrices make_matrices(MatrixLayout layout, const QMatMulConfig& cfg, std::size_t rows, std::size_t cols,
                       std::size_t* tensor_rows, std::size_t* tensor_cols) {
  const bool stacked = layout == MatrixLayout::kStacked;
  *tensor_rows = (stacked ? cfg.batch * cfg.heads : cfg.batch) * rows;
  *tensor_cols = (stacked ? 1 : cfg.heads) * cols;
  const std::size_t ld = *tensor_cols;
  return {rows, cols,
          stacked ? kernels::MatrixStrides{ld, cfg.heads * rows * ld, rows * ld}
                  : kernels::MatrixStrides{ld, rows * ld, cols}};
}

// The batch of the three operands in the order a kernel reads them (gemm.h: first, second, output).
kernels::GemmBatch batch_of(const QMatMulConfig& cfg, const Matrices& first, const Matrices& second,
                            const Matrices& out) {
  return kernels::GemmBatch{cfg.batch, cfg.heads, first.strides, second.strides, out.strides};
}

// One product's shapes: A_j n × k, B_j k × m (m × k transposed), Y_j n × m; throws naming both tensors otherwise.
struct Geometry {
  std::size_t n = 0, k = 0, m = 0;
  Matrices a, b;
};

Geometry geometry_of(const QMatMulConfig& cfg, const Tensor& a, const Tensor& b) {
  const std::string shapes = std::string("qmatmul: A ") + a.describe() + " (" + name_of(cfg.a) + ") and B " +
                             b.describe() + " (" + name_of(cfg.b) + ")";
  const std::string products = std::to_string(cfg.batch) + " × " + std::to_string(cfg.heads) + " products A_j · B_j" +
                               (cfg.transpose_b ? "ᵀ" : "");
  Geometry g;
  if (!matrices_of(a, cfg.a, cfg, &g.a) || !matrices_of(b, cfg.b, cfg, &g.b))
    throw std::invalid_argument(shapes + " do not hold " + products + ": a tensor's rows or columns do not divide");
  g.n = g.a.rows;
  g.k = g.a.cols;
  const std::size_t b_reduced = cfg.transpose_b ? g.b.cols : g.b.rows;
  g.m = cfg.transpose_b ? g.b.rows : g.b.cols;
  if (b_reduced != g.k)
    throw std::invalid_argument(shapes + " do not form " + products + ": A_j is " + std::to_string(g.n) + " × " +
                                std::to_string(g.k) + ", B_j is " + std::to_string(g.b.rows) + " × " +
                                std::to_string(g.b.cols));
  // Forward reduces k, dA reduces m, dB reduces n: each int32 sum of int8 products is exact up to kMaxReduction.
  if (g.k > kernels::kMaxReduction || g.m > kernels::kMaxReduction || g.n > kernels::kMaxReduction)
    throw std::invalid_argument(shapes + ": a reduction of " + std::to_string(std::max({g.n, g.k, g.m})) +
                                " exceeds kMaxReduction = " + std::to_string(kernels::kMaxReduction));
  return g;
}

// Y[n×m] per matrix = first · second, second k × m (not transposed: the dgrad layout) or m × k (the forward one).
void multiply(const int8_t* first, const Matrices& fm, const int8_t* second, const Matrices& sm, bool second_transposed,
              int32_t* out, const Matrices& om, std::size_t reduction, const QMatMulConfig& cfg,
              kernels::ThreadPool* pool) {
  const kernels::GemmBatch batch = batch_of(cfg, fm, sm, om);
  if (second_transposed) {
    kernels::gemm_forward_batched(first, second, out, om.rows, om.cols, reduction, batch, pool);
  } else {
    kernels::gemm_dgrad_batched(first, second, out, om.rows, reduction, om.cols, batch, pool);
  }
}

}  // namespace

VarPtr qmatmul(const StepContext& ctx, uint32_t layer, const QMatMulConfig& cfg, const VarPtr& a, const VarPtr& b) {
  cfg.validate();
  const Geometry g = geometry_of(cfg, a->value, b->value);
  auto aq = std::make_shared<const Tensor>(
      quantize_activation(a->value, cfg.a_bits, true, quant::ScaleRule::kCover, 1, ctx.pool));
  auto bq = a == b && cfg.a_bits == cfg.b_bits
                ? aq
                : std::make_shared<const Tensor>(
                      quantize_activation(b->value, cfg.b_bits, true, quant::ScaleRule::kCover, 1, ctx.pool));
  std::size_t yr = 0, yc = 0;
  const Matrices ym = make_matrices(cfg.y, cfg, g.n, g.m, &yr, &yc);
  auto out = std::make_shared<Var>();
  // The matrices tile Y, so the GEMMs write every element.
  out->value = Tensor::uninitialized(yr, yc, DType::kI32, aq->exponent() + bq->exponent());
  multiply(aq->data<int8_t>(), g.a, bq->data<int8_t>(), g.b, cfg.transpose_b, out->value.data<int32_t>(), ym, g.k, cfg,
           ctx.pool);
  if (!ctx.training() || (!a->requires_grad && !b->requires_grad)) return out;

  ctx.tape->record([ctx, layer, cfg, g, ym, a, b, out, aq, bq] {
    if (!out->has_grad) return;
    const Tensor dy = take_grad(*out);
    quant::ShiftQuantized q;
    quant::shiftquant(dy.data<int32_t>(), dy.rows(), dy.cols(), dy.exponent(), {cfg.grad_bits, cfg.grad_groups},
                      ctx.rounding_rng(layer, cfg.grad_slot), &q, ctx.pool);
    const int8_t* ds = q.shifted.data();  // the quantized dY at one exponent: Y's layout
    if (a->requires_grad) {
      // dA_j[n×k] = dY_s,j · B_q,jᵀ (B_j k × m: the forward layout), or · B_q,j (transposed B_j m × k: dgrad).
      Tensor da =
          Tensor::uninitialized(a->value.rows(), a->value.cols(), DType::kI32, q.shifted_exponent() + bq->exponent());
      multiply(ds, ym, bq->data<int8_t>(), g.b, !cfg.transpose_b, da.data<int32_t>(), g.a, g.m, cfg, ctx.pool);
      accumulate_grad(*a, std::move(da), ctx.pool);
    }
    if (b->requires_grad) {
      Tensor db =
          Tensor::uninitialized(b->value.rows(), b->value.cols(), DType::kI32, q.shifted_exponent() + aq->exponent());
      const kernels::GemmBatch batch = cfg.transpose_b ? batch_of(cfg, ym, g.a, g.b) : batch_of(cfg, g.a, ym, g.b);
      if (cfg.transpose_b) {  // dB_j[m×k] = dY_s,jᵀ · A_q,j (reduction over n)
        kernels::gemm_wgrad_batched(ds, aq->data<int8_t>(), db.data<int32_t>(), g.n, g.m, g.k, batch, ctx.pool);
      } else {  // dB_j[k×m] = A_q,jᵀ · dY_s,j (reduction over n)
        kernels::gemm_wgrad_batched(aq->data<int8_t>(), ds, db.data<int32_t>(), g.n, g.k, g.m, batch, ctx.pool);
      }
      accumulate_grad(*b, std::move(db), ctx.pool);
    }
  });
  return out;
}

}  // namespace qtrain
