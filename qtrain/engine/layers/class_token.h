// The class token of a Vision Transformer (`--pool cls`): a learned token prepended to every sequence, and the
// selection of that token's row after the last block (the classifier reads it instead of the tokens' mean).
//
// ClassToken    x: N·T × dim (N sequences of T tokens) → N·(T+1) × dim, row n·(T+1) = the parameter c (1 × dim),
//               rows n·(T+1)+1+t = x's row n·T+t. Formed as the residual add of ops/add.h of two zero-padded
//               tensors (x's rows moved down by one per sequence; c in the first row of each), so the exponents
//               are aligned the one exact way the engine does everywhere. Backward: dx = dy's token rows;
//               dc = Σ_n dy[n·(T+1), :] in exact int64 (N·2^31 < 2^63), narrowed once.
//               Float formula: y_n = [c; x_n], dx_n = dy_n[1:], dc = Σ_n dy_n[0].
//               Initialization: U(−b, b), b = 0.02·√3 (the trunc-normal 0.02 of ViT), no weight decay.
// ClassTokenRow x: N·S × dim → N × dim, row n = x's row n·S. Backward: dy scattered into zeros.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"

namespace qtrain {

class ClassToken final : public Layer {
 public:
  ClassToken(std::size_t tokens, std::size_t dim, uint32_t layer_id, uint64_t seed);  // tokens: T, before it
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&weight_}; }
  std::string name() const override;
  std::string layer_name() const override { return "cls" + std::to_string(id_); }
  Param& weight() { return weight_; }

 private:
  std::size_t tokens_, dim_;
  uint32_t id_;
  Param weight_;  // 1 × dim
};

class ClassTokenRow final : public Layer {
 public:
  ClassTokenRow(std::size_t tokens, std::size_t dim);  // tokens: S, the class token included
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::string name() const override;

 private:
  std::size_t tokens_, dim_;
};

}  // namespace qtrain
