#include "qtrain/engine/layers/transformer_block.h"

#include "qtrain/engine/ops/add.h"
#include "qtrain/engine/ops/gelu.h"
#include "qtrain/quant/error.h"

namespace qtrain {

TransformerBlock::TransformerBlock(const TransformerBlockSpec& spec, uint32_t first_id, uint64_t seed) : spec_(spec) {
  const std::size_t dim = spec.attention.dim;
  if (spec.mlp_ratio < 1 || spec.mlp_ratio > 64)
    throw UsageError("--mlp-ratio " + std::to_string(spec.mlp_ratio) + " is out of range 1..64");
  if (spec.gelu_bits < 2 || spec.gelu_bits > 8)
    throw UsageError("GELU input bits " + std::to_string(spec.gelu_bits) + " out of range 2..8");
  uint32_t id = first_id;
  ln1_ = std::make_unique<L1LayerNorm>(dim, id++);
  attn_ = std::make_unique<MultiHeadAttention>(spec.attention, id, seed);
  id += MultiHeadAttention::kLayerIds;
  ln2_ = std::make_unique<L1LayerNorm>(dim, id++);
  LinearSpec l1 = spec.attention.projection;
  l1.in = dim;
  l1.out = dim * spec.mlp_ratio;
  l1.signed_input = true;  // a layer norm's output
  l1.relu = spec.act == MlpActivation::kRelu;
  fc1_ = std::make_unique<Linear>(l1, id++, seed);
  LinearSpec l2 = l1;
  l2.in = l1.out;
  l2.out = dim;
  l2.relu = false;
  l2.signed_input = spec.act == MlpActivation::kGelu;  // GELU dips to −0.17; ReLU's output is non-negative
  fc2_ = std::make_unique<Linear>(l2, id++, seed);
}

std::string TransformerBlock::name() const {
  return "TransformerBlock(dim " + std::to_string(spec_.attention.dim) + ", MLP ×" + std::to_string(spec_.mlp_ratio) +
         (spec_.act == MlpActivation::kGelu ? " GELU" : " ReLU") + ")";
}

VarPtr TransformerBlock::forward(const StepContext& ctx, const VarPtr& x) {
  const VarPtr h = add(ctx, x, attn_->forward(ctx, ln1_->forward(ctx, x)));
  VarPtr m = fc1_->forward(ctx, ln2_->forward(ctx, h));
  if (spec_.act == MlpActivation::kGelu) m = gelu(ctx, GeluConfig{spec_.gelu_bits}, m);
  return add(ctx, h, fc2_->forward(ctx, m));
}

}  // namespace qtrain
