#include "qtrain/engine/ops/qgemm_op.h"

#include <algorithm>
#include <optional>
#include <stdexcept>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

Tensor quantize_activation(const Tensor& x, int bits, bool is_signed, quant::ScaleRule scale, int groups,
                           kernels::ThreadPool* pool) {
  if (x.dtype() == DType::kI8 && x.axis() == ScaleAxis::kTensor && is_signed && bits == 8) return x;
  const Tensor* src = &x;
  Tensor widened;
  if (x.dtype() == DType::kI8) {
    widened = Tensor::uninitialized(x.rows(), x.cols(), DType::kI32);
    std::copy(x.data<int8_t>(), x.data<int8_t>() + x.size(), widened.data<int32_t>());
    widened.set_exponents(x.axis(), x.exponents());
    src = &widened;
  }
  if (src->axis() == ScaleAxis::kRow)
    throw std::logic_error("quantized GEMM input with per-row exponents: " + x.describe());
  Tensor q = Tensor::uninitialized(x.rows(), x.cols(), DType::kI8);  // quantize_to_tensor writes every element
  quant::QuantizeOptions opt{is_signed ? quant::signed_range(bits) : quant::unsigned_range(bits)};
  opt.scale = scale;
  if (groups > 1 && src->axis() == ScaleAxis::kTensor) {
    q.set_exponent(quant::quantize_column_groups(src->data<int32_t>(), x.rows(), x.cols(), src->exponent(), opt, groups,
                                                 q.data<int8_t>(), pool));
    return q;
  }
  // A non-negative input's known maximum is both its max |x| and its max(x, 0).
  const std::optional<uint64_t> known = x.nonnegative_max();
  if (known && src->axis() == ScaleAxis::kTensor) opt.known_max = &*known;
  const auto& e = src->exponents();
  q.set_exponent(quant::quantize_to_tensor(src->data<int32_t>(), x.rows(), x.cols(), e.data(), e.size(), opt,
                                           q.data<int8_t>(), pool));
  return q;
}

QGemmOp::QGemmOp(const QGemmConfig& cfg) : cfg_(cfg) { cfg_.validate(); }

std::shared_ptr<const Tensor> QGemmOp::quantize_input(Var& x, const QGemmConfig& c, kernels::ThreadPool* pool) const {
  // Bits 2..8, groups < 2^16 (validated): a distinct non-zero key per setting.
  const uint32_t key = static_cast<uint32_t>(c.act_bits) | (c.signed_input ? 16u : 0u) |
                       (static_cast<uint32_t>(c.scale) << 5) | (static_cast<uint32_t>(c.act_groups) << 8);
  if (x.quantized == nullptr || x.quantized_key != key) {
    x.quantized = std::make_shared<const Tensor>(quantize_input(x.value, c, pool));
    x.quantized_key = key;
  }
  return x.quantized;
}

namespace {

// W_q of `w` at c's bits and granularity. Weights always take the covering step: at 4 bits they cost no accuracy on
// ResNet-8 (W4A8G8 ≈ W8A8G8), and an error search over every weight each step would cost the MLP a third of its
// speed.
std::shared_ptr<QuantizedWeights> quantize_weights(const Param& w, const QGemmConfig& c) {
  const std::size_t m = w.master.rows(), k = w.master.cols();
  const quant::QuantizeOptions opt{quant::signed_range(c.weight_bits)};
  auto qw = std::make_shared<QuantizedWeights>();
  qw->q = Tensor::uninitialized(m, k, DType::kI8);  // both quantizers write every element
  std::vector<int> e_row(m);
  const int e_master = w.master.exponent();
  if (c.granularity == WeightGranularity::kPerTensor) {
    // One exponent covering max|w| over the whole matrix; every row carries it (the GEMM epilogues and the dgrad
    // alignment read per-row exponents either way; aligned then equals q).
    const int e = quant::quantize_to_tensor(w.master.data<int32_t>(), m, k, &e_master, 1, opt, qw->q.data<int8_t>());
    std::fill(e_row.begin(), e_row.end(), e);
  } else {
    quant::quantize_per_row(w.master.data<int32_t>(), m, k, e_master, opt, qw->q.data<int8_t>(), e_row.data());
  }
  qw->aligned.resize(m * k);
  qw->aligned_exponent = quant::align_rows(qw->q.data<int8_t>(), m, k, e_row.data(),
                                           static_cast<uint32_t>(opt.range.hi), qw->aligned.data());
  qw->q.set_exponents(ScaleAxis::kRow, std::move(e_row));
  qw->version = w.version();
  qw->bits = c.weight_bits;
  qw->granularity = c.granularity;
  return qw;
}

}  // namespace

std::shared_ptr<const QuantizedWeights> QGemmOp::weights(const Param& w, const QGemmConfig& c) {
  // W_q of an older version can never be asked for again (versions only grow): drop them all.
  if (!cache_.empty() && cache_.front()->version != w.version()) cache_.clear();
  for (auto it = cache_.begin(); it != cache_.end(); ++it)
    if ((*it)->bits == c.weight_bits && (*it)->granularity == c.granularity) {
      std::rotate(cache_.begin(), it, it + 1);  // most recently used first
      return cache_.front();
    }
  cache_.insert(cache_.begin(), quantize_weights(w, c));
  if (cache_.size() > kWeightCacheEntries) cache_.pop_back();
  return cache_.front();
}

void WeightProducts::multiply(const int8_t* a, const int8_t* w, std::size_t m, std::size_t k, int32_t* c, std::size_t n,
                              kernels::ThreadPool* pool, const kernels::GemmEpilogue& epilogue) {
  const bool fwd = use_ == kernels::PackedWeights::Use::kForward;
  if (!used_) {  // the first product packs W inside the call
    used_ = true;
    if (fwd) {
      kernels::gemm_forward(a, w, c, n, m, k, pool, epilogue);
    } else {
      kernels::gemm_dgrad(a, w, c, n, m, k, pool);
    }
    return;
  }
  if (packed_.empty())
    packed_ = fwd ? kernels::pack_weights_forward(w, m, k, pool) : kernels::pack_weights_dgrad(w, m, k, pool);
  if (fwd) {
    kernels::gemm_forward_packed(a, packed_, c, n, pool, epilogue);
  } else {
    kernels::gemm_dgrad_packed(a, packed_, c, n, pool);
  }
}

quant::ShiftQuantized QGemmOp::quantize_grad(const StepContext& ctx, uint32_t layer, const QGemmConfig& c,
                                             const Tensor& dy) const {
  quant::ShiftQuantized g;
  quant::shiftquant(dy.data<int32_t>(), dy.rows(), dy.cols(), dy.exponent(), {c.grad_bits, c.groups},
                    ctx.rounding_rng(layer, kOutputGradSlot), &g, ctx.pool);
  return g;
}

void qgemm_dgrad_rows(const quant::ShiftQuantized& g, const QuantizedWeights& w, std::size_t r0, std::size_t r1,
                      int32_t* out, kernels::ThreadPool* pool) {
  w.dgrad(g.shifted.data() + r0 * w.q.rows(), out, r1 - r0, pool);
}

int qgemm_dgrad_exponent(const quant::ShiftQuantized& g, const QuantizedWeights& w) {
  return g.shifted_exponent() + w.aligned_exponent;
}

Tensor qgemm_dgrad(const quant::ShiftQuantized& g, const QuantizedWeights& w, kernels::ThreadPool* pool) {
  Tensor dx = Tensor::uninitialized(g.rows, w.q.cols(), DType::kI32, qgemm_dgrad_exponent(g, w));  // GEMM output
  qgemm_dgrad_rows(g, w, 0, g.rows, dx.data<int32_t>(), pool);
  return dx;
}

void WgradAccumulator::add(const quant::ShiftQuantized& g, std::size_t r0, std::size_t r1, const int8_t* x_rows,
                           kernels::ThreadPool* pool) {
  if (r1 - r0 > kernels::kMaxReduction)
    throw std::logic_error("WgradAccumulator: chunk of " + std::to_string(r1 - r0) + " rows exceeds kMaxReduction");
  if (r1 == r0) return;
  if (chunks_ == 0) {
    first_ = Tensor::uninitialized(m_, k_, DType::kI32);  // the GEMM writes every element
    kernels::gemm_wgrad(g.q.data() + r0 * m_, x_rows, first_.data<int32_t>(), r1 - r0, m_, k_, pool);
  } else {
    Tensor part = Tensor::uninitialized(m_, k_, DType::kI32);  // the GEMM writes every element
    kernels::gemm_wgrad(g.q.data() + r0 * m_, x_rows, part.data<int32_t>(), r1 - r0, m_, k_, pool);
    if (sum_.empty() && rows_ + (r1 - r0) <= kernels::kMaxReduction) {
      // Every sum so far reduces ≤ kMaxReduction rows of int8 products: exact in int32 (the GEMM's own bound).
      kernels::add_strided_i32(first_.data<int32_t>(), 0, part.data<int32_t>(), 0, 1, m_ * k_);
    } else {
      if (sum_.empty()) {
        sum_.assign(first_.data<int32_t>(), first_.data<int32_t>() + m_ * k_);
        first_ = Tensor();
      }
      const int32_t* p = part.data<int32_t>();
      for (std::size_t i = 0; i < m_ * k_; ++i) sum_[i] += p[i];  // ≤ chunks·2^31: exact in int64
    }
  }
  rows_ += r1 - r0;
  ++chunks_;
}

Tensor WgradAccumulator::finish(const quant::ShiftQuantized& g, int ex) {
  std::vector<int> e_dw(m_);
  for (std::size_t c = 0; c < m_; ++c) e_dw[c] = g.channel_exponent(c) + ex;
  if (sum_.empty()) {  // int32 sums (exact; what narrowing the int64 sums would give, with shift 0)
    Tensor dw = chunks_ >= 1 ? std::move(first_) : Tensor(m_, k_, DType::kI32);
    dw.set_exponents(ScaleAxis::kRow, std::move(e_dw));
    return dw;
  }
  return narrow_per_row(sum_.data(), m_, k_, e_dw);
}

Tensor qgemm_wgrad(const quant::ShiftQuantized& g, const Tensor& xq, kernels::ThreadPool* pool, std::size_t max_rows) {
  max_rows = std::clamp<std::size_t>(max_rows, 1, kernels::kMaxReduction);
  const std::size_t n = g.rows, k = xq.cols();
  WgradAccumulator acc(g.cols, k);
  for (std::size_t r0 = 0; r0 < n; r0 += max_rows) {
    const std::size_t r1 = std::min(n, r0 + max_rows);
    acc.add(g, r0, r1, xq.data<int8_t>() + r0 * k, pool);
  }
  return acc.finish(g, xq.exponent());
}

}  // namespace qtrain
