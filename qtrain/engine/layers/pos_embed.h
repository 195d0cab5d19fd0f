// A learned positional embedding: y = x + P, P a tokens × dim parameter added to every sequence of x
// (x: N·tokens × dim, the token rows of N sequences in order).
//
// Forward   P (int32 master) is repeated N times (exact), then the residual add of ops/add.h: both operands at the
//           finer exponent, summed exactly in int64, narrowed once to the finest int32 exponent that fits.
// Backward  dx = dy; dP[t, :] = Σ_n dy[n·tokens + t, :] — exact int64 sums (N·2^31 < 2^63 for N < 2^32), narrowed
//           to the finest exponent that fits int32, added into P's gradient.
// Float formula: y = x + 1_N ⊗ P, dx = dy, dP = Σ_n dy_n.
// Initialization: U(−b, b) with b = 0.02·√3 (the standard deviation 0.02 of ViT's trunc-normal init).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"

namespace qtrain {

class PositionalEmbedding final : public Layer {
 public:
  PositionalEmbedding(std::size_t tokens, std::size_t dim, uint32_t layer_id, uint64_t seed);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&weight_}; }
  std::string name() const override;
  std::string layer_name() const override { return "pos" + std::to_string(id_); }
  Param& weight() { return weight_; }

 private:
  std::size_t tokens_, dim_;
  uint32_t id_;
  Param weight_;  // tokens × dim, no weight decay
};

}  // namespace qtrain
