#include "qtrain/engine/layers/pos_embed.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/ops/add.h"
#include "qtrain/quant/error.h"

namespace qtrain {

PositionalEmbedding::PositionalEmbedding(std::size_t tokens, std::size_t dim, uint32_t layer_id, uint64_t seed)
    : tokens_(tokens), dim_(dim), id_(layer_id) {
  if (tokens == 0 || dim == 0) throw UsageError("positional embedding needs at least one token and one feature");
  weight_.name = layer_name() + ".weight";
  weight_.id = layer_id * 2;
  weight_.decay = false;
  init_uniform_bound(weight_, tokens, dim, 0.02 * std::sqrt(3.0), seed);
}

std::string PositionalEmbedding::name() const {
  return "PositionalEmbedding(" + std::to_string(tokens_) + "x" + std::to_string(dim_) + ")";
}

VarPtr PositionalEmbedding::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.cols() != dim_ || xv.rows() % tokens_ != 0)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N sequences of " +
                                std::to_string(tokens_) + " tokens × " + std::to_string(dim_) + " features");
  const std::size_t n = xv.rows() / tokens_, block = tokens_ * dim_;
  auto tiled = std::make_shared<Var>();
  tiled->value = Tensor::uninitialized(xv.rows(), dim_, DType::kI32, weight_.master.exponent());
  const int32_t* p = weight_.master.data<int32_t>();
  int32_t* t = tiled->value.data<int32_t>();
  for (std::size_t s = 0; s < n; ++s) std::memcpy(t + s * block, p, block * sizeof(int32_t));
  tiled->requires_grad = ctx.training();
  // Recorded before the add, so it runs after the add's backward has handed dy to `tiled`.
  if (ctx.training())
    ctx.tape->record([this, tiled, n, block, pool = ctx.pool] {
      if (!tiled->has_grad) return;
      const Tensor g = take_grad(*tiled);
      if (g.axis() != ScaleAxis::kTensor) throw std::logic_error(name() + ": gradient with several exponents");
      std::vector<int64_t> sum(block, 0);  // Σ over n < 2^32 sequences of int32: exact in int64
      const int32_t* d = g.data<int32_t>();
      for (std::size_t s = 0; s < n; ++s)
        for (std::size_t i = 0; i < block; ++i) sum[i] += d[s * block + i];
      accumulate_grad(weight_, narrow_tensor(sum.data(), tokens_, dim_, g.exponent()), pool);
    });
  return add(ctx, x, tiled);
}

}  // namespace qtrain
