#include "qtrain/engine/layers/linear.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

namespace {
QGemmConfig gemm_config(const LinearSpec& spec) {
  if (spec.in == 0 || spec.out == 0) throw UsageError("Linear layer needs in > 0 and out > 0");
  if (spec.in > kernels::kMaxReduction || spec.out > kernels::kMaxReduction)
    throw UsageError("Linear layer " + std::to_string(spec.in) + "->" + std::to_string(spec.out) + " exceeds " +
                     std::to_string(kernels::kMaxReduction) +
                     " features (the int32 accumulator bound of the forward and input-gradient GEMMs)");
  return {spec.weight_bits, spec.act_bits, spec.grad_bits, spec.groups, spec.signed_input, spec.scale, spec.act_groups};
}
}  // namespace

Linear::Linear(const LinearSpec& spec, uint32_t layer_id, uint64_t seed)
    : spec_(spec), id_(layer_id), op_(gemm_config(spec)) {
  weight_.name = layer_name() + ".weight";
  weight_.id = layer_id * 2;
  bias_.name = layer_name() + ".bias";
  bias_.id = layer_id * 2 + 1;
  init_uniform(weight_, spec.out, spec.in, spec.in, seed);
  init_uniform(bias_, 1, spec.out, spec.in, seed);
}

std::string Linear::name() const {
  return "Linear(" + std::to_string(spec_.in) + "->" + std::to_string(spec_.out) + ", W" +
         std::to_string(spec_.weight_bits) + "A" + std::to_string(spec_.act_bits) + "G" +
         std::to_string(spec_.grad_bits) + (spec_.relu ? ", ReLU" : "") + ")";
}

VarPtr Linear::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.cols() != spec_.in)
    throw std::invalid_argument(name() + ": input has " + std::to_string(xv.cols()) + " features, expected " +
                                std::to_string(spec_.in));
  const std::size_t n = xv.rows(), m = spec_.out;
  const QGemmConfig qc = op_.resolve(ctx, layer_name());
  const std::shared_ptr<const QuantizedWeights> wq = op_.weights(weight_, qc);
  auto xq = std::make_shared<Tensor>(QGemmOp::quantize_input(xv, qc, ctx.pool));
  const int ex = xq->exponent();

  // Y = X_q · W_qᵀ: each output sums `in` ≤ kMaxReduction int8 products, exact in int32; exponent e_x + e_w[c].
  std::vector<int> e_out(m);
  for (std::size_t c = 0; c < m; ++c) e_out[c] = ex + wq->q.exponents()[c];
  // Bias, moved from its master exponent to each output column's exponent (saturating: a bias far coarser than the
  // column, after a diverged run or from a hostile model file, must not overflow the shift; found by fuzz_model).
  const int32_t* b = bias_.master.data<int32_t>();
  const int eb = bias_.master.exponent();
  std::vector<int64_t> b_aligned(m);
  bool fits = true;
  for (std::size_t c = 0; c < m; ++c) {
    b_aligned[c] = quant::shift_round_even_sat(b[c], e_out[c] - eb);
    fits = fits && b_aligned[c] == quant::saturate_i32(b_aligned[c]);
  }
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(n, m, DType::kI32);  // the GEMM writes every element
  int32_t* y = out->value.data<int32_t>();
  if (fits) {
    // The usual case: the GEMM adds the bias (saturating), and the ReLU, as each output tile is finished.
    const std::vector<int32_t> b32(b_aligned.begin(), b_aligned.end());
    wq->forward(xq->data<int8_t>(), y, n, ctx.pool, kernels::GemmEpilogue{b32.data(), spec_.relu});
  } else {
    // A bias beyond int32 at the column's exponent (a diverged run or a hostile file): saturate in int64.
    wq->forward(xq->data<int8_t>(), y, n, ctx.pool);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < m; ++c) y[r * m + c] = quant::saturate_i32(int64_t{y[r * m + c]} + b_aligned[c]);
    if (spec_.relu) kernels::relu_i32(y, n * m, y);
  }
  out->value.set_exponents(ScaleAxis::kCol, std::move(e_out));

  if (!ctx.training()) return out;
  // Backward keeps X_q and this step's W_q (the optimizer may requantize before a later backward).
  ctx.tape->record([this, ctx, qc, x, out, xq, wq, n, m] {
    if (!out->has_grad) return;
    // The fused ReLU's backward: dY·[y > 0] (y > 0 exactly where the pre-activation was), masked in place in the
    // gradient this op consumes.
    Tensor masked;
    if (spec_.relu) {
      masked = take_grad(*out);
      kernels::relu_backward_i32(masked.data<int32_t>(), out->value.data<int32_t>(), masked.size(),
                                 masked.data<int32_t>());
    }
    const Tensor& dy = spec_.relu ? masked : out->grad;
    const quant::ShiftQuantized g = op_.quantize_grad(ctx, id_, qc, dy);

    // dX = dY_shifted · W_aligned (reduction over m ≤ kMaxReduction channels).
    if (x->requires_grad && spec_.needs_input_grad) accumulate_grad(*x, qgemm_dgrad(g, *wq, ctx.pool));

    // dW = dY_qᵀ · X_q (reduction over the batch, in chunks of ≤ kMaxReduction rows).
    accumulate_grad(weight_, qgemm_wgrad(g, *xq, ctx.pool), ctx.pool);

    // db = Σ_n dY: exact in int64 (n·2^31 < 2^63), then the finest exponent that fits int32.
    std::vector<int64_t> db(m, 0);
    const int32_t* d = dy.data<int32_t>();
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < m; ++c) db[c] += d[r * m + c];
    accumulate_grad(bias_, narrow_tensor(db.data(), 1, m, dy.exponent()), ctx.pool);
  });
  return out;
}

}  // namespace qtrain
