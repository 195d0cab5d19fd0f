#include "qtrain/engine/layers/attention.h"

#include <cmath>
#include <stdexcept>

#include "qtrain/engine/ops/qmatmul.h"
#include "qtrain/engine/ops/softmax.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

void AttentionSpec::validate() const {
  if (dim == 0 || heads == 0 || dim % heads != 0)
    throw UsageError("attention: --dim " + std::to_string(dim) + " must be a positive multiple of --heads " +
                     std::to_string(heads));
  if (tokens == 0) throw UsageError("attention needs at least one token");
  if (tokens > (std::size_t{1} << 16))
    throw UsageError("attention over " + std::to_string(tokens) + " tokens exceeds 65536");
  if (attn_bits < 2 || attn_bits > 8)
    throw UsageError("--attn-bits " + std::to_string(attn_bits) + " is out of range 2..8");
  quant::validate(quant::ShiftQuantConfig{attn_grad_bits, attn_grad_groups});
}

namespace {
LinearSpec projection(const AttentionSpec& s) {
  LinearSpec l = s.projection;
  l.in = l.out = s.dim;
  l.relu = false;
  return l;
}
}  // namespace

MultiHeadAttention::MultiHeadAttention(const AttentionSpec& spec, uint32_t first_id, uint64_t seed)
    : spec_(spec), id_(first_id) {
  spec.validate();
  const LinearSpec in = projection(spec);
  LinearSpec out = in;
  out.signed_input = true;  // O = P·V is signed
  q_ = std::make_unique<Linear>(in, first_id + 1, seed);
  k_ = std::make_unique<Linear>(in, first_id + 2, seed);
  v_ = std::make_unique<Linear>(in, first_id + 3, seed);
  out_ = std::make_unique<Linear>(out, first_id + 4, seed);
}

std::string MultiHeadAttention::name() const {
  return "MultiHeadAttention(dim " + std::to_string(spec_.dim) + ", " + std::to_string(spec_.heads) + " heads, " +
         std::to_string(spec_.tokens) + " tokens, A" + std::to_string(spec_.attn_bits) + "G" +
         std::to_string(spec_.attn_grad_bits) + (spec_.causal ? ", causal" : "") + ")";
}

VarPtr MultiHeadAttention::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.cols() != spec_.dim || xv.rows() % spec_.tokens != 0)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N sequences of " +
                                std::to_string(spec_.tokens) + " tokens × " + std::to_string(spec_.dim));
  const std::size_t n = xv.rows() / spec_.tokens, d_head = spec_.dim / spec_.heads;
  const VarPtr q = q_->forward(ctx, x), k = k_->forward(ctx, x), v = v_->forward(ctx, x);

  QMatMulConfig scores;
  scores.batch = n;
  scores.heads = spec_.heads;
  scores.a = scores.b = MatrixLayout::kPerHead;
  scores.y = MatrixLayout::kStacked;
  scores.transpose_b = true;
  scores.a_bits = scores.b_bits = spec_.attn_bits;
  scores.grad_bits = spec_.attn_grad_bits;
  scores.grad_groups = spec_.attn_grad_groups;
  scores.grad_slot = kMatmulGradSlot;
  const VarPtr s = qmatmul(ctx, id_, scores, q, k);  // [N·heads·tokens × tokens]

  SoftmaxConfig sm;
  sm.scale = 1.0 / std::sqrt(static_cast<double>(d_head));  // control plane; the op makes it dyadic
  sm.causal = spec_.causal;
  sm.rows_per_matrix = spec_.tokens;
  const VarPtr p = softmax(ctx, sm, s);

  QMatMulConfig mix = scores;
  mix.a = MatrixLayout::kStacked;
  mix.b = mix.y = MatrixLayout::kPerHead;
  mix.transpose_b = false;
  mix.grad_slot = kSecondMatmulGradSlot;
  const VarPtr o = qmatmul(ctx, id_, mix, p, v);  // [N·tokens × dim]
  return out_->forward(ctx, o);
}

}  // namespace qtrain
