#include "engine/linear.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/gemm.h"
#include "quant/error.h"
#include "quant/pow2.h"
#include "quant/shiftquant.h"

namespace qtrain {

Linear::Linear(const LinearSpec& spec, uint32_t layer_id, uint64_t seed) : spec_(spec), id_(layer_id) {
  if (spec.in == 0 || spec.out == 0) throw UsageError("Linear layer needs in > 0 and out > 0");
  if (spec.in > kernels::kMaxReduction)
    throw UsageError("Linear layer input width " + std::to_string(spec.in) + " exceeds " +
                     std::to_string(kernels::kMaxReduction) + " (the int32 accumulator bound of int8 GEMMs)");
  quant::signed_range(spec.weight_bits);  // validates 2..8
  quant::signed_range(spec.act_bits);
  quant::validate(quant::ShiftQuantConfig{spec.grad_bits, spec.groups});
  weight_.name = "linear" + std::to_string(layer_id) + ".weight";
  weight_.id = layer_id * 2;
  bias_.name = "linear" + std::to_string(layer_id) + ".bias";
  bias_.id = layer_id * 2 + 1;
  init_uniform(weight_, spec.out, spec.in, spec.in, seed);
  init_uniform(bias_, 1, spec.out, spec.in, seed);
}

std::string Linear::name() const {
  return "Linear(" + std::to_string(spec_.in) + "->" + std::to_string(spec_.out) + ", W" +
         std::to_string(spec_.weight_bits) + "A" + std::to_string(spec_.act_bits) + "G" +
         std::to_string(spec_.grad_bits) + ")";
}

void Linear::quantize_weights(kernels::ThreadPool* pool) {
  if (wq_version_ == weight_.version && !wq_.empty()) return;
  const quant::QuantizeOptions opt{quant::signed_range(spec_.weight_bits)};
  wq_ = Tensor(spec_.out, spec_.in, DType::kI8);
  std::vector<int> e_row(spec_.out);
  quant::quantize_per_row(weight_.master.data<int32_t>(), spec_.out, spec_.in, weight_.master.exponent(), opt,
                          wq_.data<int8_t>(), e_row.data());
  wq_.set_exponents(ScaleAxis::kRow, std::move(e_row));
  wq_packed_ = spec_.prepack_weights ? kernels::pack_weights_forward(wq_.data<int8_t>(), spec_.out, spec_.in, pool)
                                     : kernels::PackedWeights{};
  wq_version_ = weight_.version;
}

std::shared_ptr<const Linear::DgradWeights> Linear::dgrad_weights(kernels::ThreadPool* pool) {
  if (dgrad_ != nullptr && dgrad_version_ == weight_.version) return dgrad_;
  auto d = std::make_shared<DgradWeights>();
  d->aligned.resize(spec_.out * spec_.in);
  d->exponent = quant::align_rows(wq_.data<int8_t>(), spec_.out, spec_.in, wq_.exponents().data(),
                                  static_cast<uint32_t>(quant::signed_range(spec_.weight_bits).hi), d->aligned.data());
  if (spec_.prepack_weights) d->packed = kernels::pack_weights_dgrad(d->aligned.data(), spec_.out, spec_.in, pool);
  dgrad_ = std::move(d);
  dgrad_version_ = weight_.version;
  return dgrad_;
}

namespace {
// The layer input as b-bit int8 with one exponent. 8-bit signed int8 input (normalized pixels) passes unchanged.
Tensor quantize_input(const Tensor& x, int bits, bool is_signed) {
  if (x.dtype() == DType::kI8 && x.axis() == ScaleAxis::kTensor && is_signed && bits == 8) return x;
  const Tensor* src = &x;
  Tensor widened;
  if (x.dtype() == DType::kI8) {
    widened = Tensor(x.rows(), x.cols(), DType::kI32);
    std::copy(x.data<int8_t>(), x.data<int8_t>() + x.size(), widened.data<int32_t>());
    widened.set_exponents(x.axis(), x.exponents());
    src = &widened;
  }
  if (src->axis() == ScaleAxis::kRow) throw std::logic_error("Linear input with per-row exponents");
  Tensor q(x.rows(), x.cols(), DType::kI8);
  const quant::QuantizeOptions opt{is_signed ? quant::signed_range(bits) : quant::unsigned_range(bits)};
  const auto& e = src->exponents();
  q.set_exponent(quant::quantize_to_tensor(src->data<int32_t>(), x.rows(), x.cols(), e.data(), e.size(), opt,
                                           q.data<int8_t>()));
  return q;
}
}  // namespace

VarPtr Linear::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.cols() != spec_.in)
    throw std::invalid_argument(name() + ": input has " + std::to_string(xv.cols()) + " features, expected " +
                                std::to_string(spec_.in));
  const std::size_t n = xv.rows(), m = spec_.out, k = spec_.in;
  if (n > kernels::kMaxReduction)
    throw UsageError("batch " + std::to_string(n) + " exceeds " + std::to_string(kernels::kMaxReduction) +
                     " (the int32 accumulator bound of the weight-gradient GEMM)");
  quantize_weights(ctx.pool);
  auto xq = std::make_shared<Tensor>(quantize_input(xv, spec_.act_bits, spec_.signed_input));
  const int ex = xq->exponent();

  auto out = std::make_shared<Var>();
  out->value = Tensor(n, m, DType::kI32);
  int32_t* y = out->value.data<int32_t>();
  if (spec_.prepack_weights) {
    kernels::gemm_forward_packed(xq->data<int8_t>(), wq_packed_, y, n, ctx.pool);
  } else {
    kernels::gemm_forward(xq->data<int8_t>(), wq_.data<int8_t>(), y, n, m, k, ctx.pool);
  }
  std::vector<int> e_out(m);
  for (std::size_t c = 0; c < m; ++c) e_out[c] = ex + wq_.exponents()[c];
  // Bias, moved from its master exponent to each output column's exponent.
  const int32_t* b = bias_.master.data<int32_t>();
  const int eb = bias_.master.exponent();
  std::vector<int64_t> b_aligned(m);
  for (std::size_t c = 0; c < m; ++c) b_aligned[c] = quant::shift_round_even(b[c], e_out[c] - eb);
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t c = 0; c < m; ++c) y[r * m + c] = quant::saturate_i32(int64_t{y[r * m + c]} + b_aligned[c]);
  out->value.set_exponents(ScaleAxis::kCol, std::move(e_out));

  if (!ctx.training()) return out;
  // Backward keeps X_q and this version's dgrad weights (shared: the optimizer may requantize before a later
  // backward, which makes new ones).
  std::shared_ptr<const DgradWeights> wd;
  if (x->requires_grad && spec_.needs_input_grad) wd = dgrad_weights(ctx.pool);
  ctx.tape->record([this, ctx, x, out, xq, wd, n, m, k] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    const quant::CounterRng rng = ctx.rounding_rng(id_ * 4 + 1);
    quant::ShiftQuantized g;
    quant::shiftquant(dy.data<int32_t>(), n, m, dy.exponent(), {spec_.grad_bits, spec_.groups}, rng, &g);

    if (wd != nullptr) {
      Tensor dx(n, k, DType::kI32, g.shifted_exponent() + wd->exponent);
      if (spec_.prepack_weights) {
        kernels::gemm_dgrad_packed(g.shifted.data(), wd->packed, dx.data<int32_t>(), n, ctx.pool);
      } else {
        kernels::gemm_dgrad(g.shifted.data(), wd->aligned.data(), dx.data<int32_t>(), n, m, k, ctx.pool);
      }
      accumulate_grad(*x, std::move(dx));
    }

    Tensor dw(m, k, DType::kI32);
    kernels::gemm_wgrad(g.q.data(), xq->data<int8_t>(), dw.data<int32_t>(), n, m, k, ctx.pool);
    std::vector<int> e_dw(m);
    for (std::size_t c = 0; c < m; ++c) e_dw[c] = g.channel_exponent(c) + xq->exponent();
    dw.set_exponents(ScaleAxis::kRow, std::move(e_dw));
    weight_.grad = std::move(dw);
    weight_.has_grad = true;

    // db = Σ_n dY: exact in int64, then the finest exponent that fits int32.
    std::vector<int64_t> db(m, 0);
    const int32_t* d = dy.data<int32_t>();
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < m; ++c) db[c] += d[r * m + c];
    uint64_t mx = 0;
    for (int64_t v : db) mx = std::max<uint64_t>(mx, static_cast<uint64_t>(v < 0 ? -v : v));
    const int s = std::max(0, quant::bit_length(mx) - 31);
    Tensor dbt(1, m, DType::kI32, dy.exponent() + s);
    for (std::size_t c = 0; c < m; ++c) dbt.data<int32_t>()[c] = quant::saturate_i32(quant::shift_round_even(db[c], s));
    bias_.grad = std::move(dbt);
    bias_.has_grad = true;
  });
  return out;
}

}  // namespace qtrain
