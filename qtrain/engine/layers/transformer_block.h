// A pre-norm transformer encoder block over N sequences of tokens (x: N·tokens × dim):
//
//   h = x + Attention(LN₁(x))                    L1 layer norms per token (norm.h), attention.h
//   y = h + W₂·act(W₁·LN₂(h) + b₁) + b₂          the MLP block: dim → mlp_ratio·dim → dim, act = GELU or ReLU
//
// The residual stream is int32 throughout (each add is the exact sum rounded once to the finest int32 exponent,
// ops/add.h), never requantized to the linear layers' bits; only the inputs of the GEMMs are.
// GELU is the integer table op of ops/gelu.h on `gelu_bits`-bit inputs; ReLU is fused into W₁'s epilogue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/layers/attention.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"

namespace qtrain {

enum class MlpActivation : uint8_t { kGelu, kRelu };

struct TransformerBlockSpec {
  AttentionSpec attention;  // dim, heads, tokens, attention bits; its projection LinearSpec is the MLP's too
  std::size_t mlp_ratio = 4;
  MlpActivation act = MlpActivation::kGelu;
  int gelu_bits = 8;  // GELU's input bits
};

class TransformerBlock final : public Layer {
 public:
  // Uses layer ids first_id … first_id + kLayerIds − 1: the two layer norms, the attention's, the MLP's linears.
  static constexpr uint32_t kLayerIds = MultiHeadAttention::kLayerIds + 4;
  TransformerBlock(const TransformerBlockSpec& spec, uint32_t first_id, uint64_t seed);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Layer*> children() override { return {ln1_.get(), attn_.get(), ln2_.get(), fc1_.get(), fc2_.get()}; }
  std::string name() const override;

 private:
  TransformerBlockSpec spec_;
  std::unique_ptr<L1LayerNorm> ln1_, ln2_;
  std::unique_ptr<MultiHeadAttention> attn_;
  std::unique_ptr<Linear> fc1_, fc2_;
};

}  // namespace qtrain
