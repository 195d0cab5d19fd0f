#include "qtrain/engine/layers/class_token.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/ops/add.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {

// The exponents of a tensor of `seqs` sequences of `out_tokens` rows whose rows come from `src` (sequences of
// `in_tokens` rows): the same per-tensor or per-column exponents; per-row exponents follow their rows, and a row
// with no source (`row_of` returns −1) takes the exponent of its sequence's first source row.
template <typename RowOf>
void copy_exponents(const Tensor& src, std::size_t seqs, std::size_t in_tokens, std::size_t out_tokens,
                    RowOf row_of, Tensor& dst) {
  if (src.axis() != ScaleAxis::kRow) {
    dst.set_exponents(src.axis(), src.exponents());
    return;
  }
  std::vector<int> e(seqs * out_tokens);
  for (std::size_t n = 0; n < seqs; ++n)
    for (std::size_t t = 0; t < out_tokens; ++t) {
      const long r = row_of(t);
      e[n * out_tokens + t] = src.exponents()[n * in_tokens + (r < 0 ? 0 : static_cast<std::size_t>(r))];
    }
  dst.set_exponents(ScaleAxis::kRow, std::move(e));
}

void check_i32(const Tensor& t, const std::string& who) {
  if (t.dtype() != DType::kI32) throw std::invalid_argument(who + ": needs an int32 input, got " + t.describe());
}

}  // namespace

ClassToken::ClassToken(std::size_t tokens, std::size_t dim, uint32_t layer_id, uint64_t seed)
    : tokens_(tokens), dim_(dim), id_(layer_id) {
  if (tokens == 0 || dim == 0) throw UsageError("class token needs at least one token and one feature");
  weight_.name = layer_name() + ".weight";
  weight_.id = layer_id * 2;
  weight_.decay = false;
  init_uniform_bound(weight_, 1, dim, 0.02 * std::sqrt(3.0), seed);
}

std::string ClassToken::name() const { return "ClassToken(" + std::to_string(dim_) + ")"; }

VarPtr ClassToken::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  check_i32(xv, name());
  if (xv.cols() != dim_ || xv.rows() % tokens_ != 0)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N sequences of " +
                                std::to_string(tokens_) + " tokens × " + std::to_string(dim_) + " features");
  const std::size_t n = xv.rows() / tokens_, s = tokens_ + 1, row = dim_ * sizeof(int32_t);
  auto shifted = std::make_shared<Var>();  // x's rows, one row down per sequence (zeros in the class rows)
  shifted->value = Tensor(n * s, dim_, DType::kI32);
  copy_exponents(xv, n, tokens_, s, [](std::size_t t) { return static_cast<long>(t) - 1; }, shifted->value);
  for (std::size_t q = 0; q < n; ++q)
    std::memcpy(shifted->value.data<int32_t>() + (q * s + 1) * dim_, xv.data<int32_t>() + q * tokens_ * dim_,
                tokens_ * row);
  auto placed = std::make_shared<Var>();  // c in every class row, zeros elsewhere
  placed->value = Tensor(n * s, dim_, DType::kI32, weight_.master.exponent());
  for (std::size_t q = 0; q < n; ++q)
    std::memcpy(placed->value.data<int32_t>() + q * s * dim_, weight_.master.data<int32_t>(), row);
  if (ctx.training()) {
    shifted->requires_grad = x->requires_grad;
    placed->requires_grad = true;
    // Recorded before the add, so they run after the add's backward has handed dy to both.
    ctx.tape->record([this, x, shifted, n, s] {
      if (!shifted->has_grad || !x->requires_grad) return;
      const Tensor g = take_grad(*shifted);
      Tensor dx = Tensor::uninitialized(n * tokens_, dim_, DType::kI32);
      copy_exponents(g, n, s, tokens_, [](std::size_t t) { return static_cast<long>(t) + 1; }, dx);
      for (std::size_t q = 0; q < n; ++q)
        std::memcpy(dx.data<int32_t>() + q * tokens_ * dim_, g.data<int32_t>() + (q * s + 1) * dim_,
                    tokens_ * dim_ * sizeof(int32_t));
      accumulate_grad(*x, std::move(dx));
    });
    ctx.tape->record([this, placed, n, s, pool = ctx.pool] {
      if (!placed->has_grad) return;
      const Tensor g = take_grad(*placed);
      if (g.axis() != ScaleAxis::kTensor) throw std::logic_error(name() + ": gradient with several exponents");
      std::vector<int64_t> sum(dim_, 0);  // Σ over n < 2^32 rows of int32: exact in int64
      const int32_t* d = g.data<int32_t>();
      for (std::size_t q = 0; q < n; ++q)
        for (std::size_t i = 0; i < dim_; ++i) sum[i] += d[q * s * dim_ + i];
      accumulate_grad(weight_, narrow_tensor(sum.data(), 1, dim_, g.exponent()), pool);
    });
  }
  return add(ctx, shifted, placed);
}

ClassTokenRow::ClassTokenRow(std::size_t tokens, std::size_t dim) : tokens_(tokens), dim_(dim) {
  if (tokens == 0 || dim == 0) throw UsageError("class-token selection needs at least one token and one feature");
}

std::string ClassTokenRow::name() const { return "ClassTokenRow(" + std::to_string(tokens_) + ")"; }

VarPtr ClassTokenRow::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  check_i32(xv, name());
  if (xv.cols() != dim_ || xv.rows() % tokens_ != 0)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N sequences of " +
                                std::to_string(tokens_) + " tokens × " + std::to_string(dim_) + " features");
  const std::size_t n = xv.rows() / tokens_, row = dim_ * sizeof(int32_t);
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(n, dim_, DType::kI32);
  if (xv.axis() == ScaleAxis::kRow) {
    std::vector<int> e(n);
    for (std::size_t q = 0; q < n; ++q) e[q] = xv.exponents()[q * tokens_];
    out->value.set_exponents(ScaleAxis::kRow, std::move(e));
  } else {
    out->value.set_exponents(xv.axis(), xv.exponents());
  }
  for (std::size_t q = 0; q < n; ++q)
    std::memcpy(out->value.data<int32_t>() + q * dim_, xv.data<int32_t>() + q * tokens_ * dim_, row);
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([this, x, out, n, row] {
    if (!out->has_grad) return;
    const Tensor g = take_grad(*out);
    Tensor dx(n * tokens_, dim_, DType::kI32);
    if (g.axis() == ScaleAxis::kRow) {
      std::vector<int> e(n * tokens_);
      for (std::size_t i = 0; i < e.size(); ++i) e[i] = g.exponents()[i / tokens_];
      dx.set_exponents(ScaleAxis::kRow, std::move(e));
    } else {
      dx.set_exponents(g.axis(), g.exponents());
    }
    for (std::size_t q = 0; q < n; ++q)
      std::memcpy(dx.data<int32_t>() + q * tokens_ * dim_, g.data<int32_t>() + q * dim_, row);
    accumulate_grad(*x, std::move(dx));
  });
  return out;
}

}  // namespace qtrain
