// Integer normalization layers: L1 batch norm (the paper's BatchNorm replacement), L2 batch norm (the baseline it is
// compared with) and L1 layer norm (the LayerNorm replacement for transformers).
//
// Layout. Activations are rows×C int32 tensors; for images rows = N·H·W (NHWC). A batch norm normalizes every
// column (channel) over all rows; a layer norm every row over its F columns. The input is an int32 accumulator with
// one exponent per column (a conv/linear output) or per tensor.
//
// Float formulas (m = number of values normalized together, c = sqrt(π/2) so that c·σ₁ = σ for a Gaussian):
//   L1:  μ = mean(x)   σ₁ = mean|x − μ|           x̂ = (x − μ)/(c·σ₁ + ε)         y = γ·x̂ + β
//        dx = [g − mean(g) − c·mean(g·x̂)·(s − mean(s))]/(c·σ₁ + ε),  g = γ·dy,  s = sign(x − μ)
//        (the exact derivative: ∂(c·σ₁)/∂x_i = c·(s_i − mean(s))/m. The factor c disappears if x̂ is written without
//        it, (x − μ)/σ₁, which is the form usually quoted.)
//   L2:  μ = mean(x)   σ = sqrt(mean((x − μ)²) + ε)   x̂ = (x − μ)/σ                 y = γ·x̂ + β
//        dx = [g − mean(g) − x̂·mean(g·x̂)]/σ
//   both: dγ = Σ dy·x̂,  dβ = Σ dy  (over the rows for a batch norm, over the rows per feature for a layer norm)
// A batch norm in training uses the batch's μ and σ₁ (σ²) and updates running statistics
// r ← (1 − momentum)·r + momentum·batch (σ₁ for L1 as the float simulation does; the unbiased variance for L2 as
// PyTorch's BatchNorm does); in evaluation (ctx.training() false) it uses the running statistics instead.
//
// Integer pipeline (details in norm.cc; the element passes are qtrain/kernels/norm.h):
//   * Working precision. Per column (row for LN) the values are reduced to a 16-bit working value
//     d = R(x, k) − μ', R(x, k) = floor(x/2^k + ½), with k the smallest shift giving |d| ≤ 2^15 − 1 (k = 0, i.e.
//     d exact, whenever the column's range already fits 15 bits). μ' = R(Σx/m, k) from the exact int64 sum.
//   * Statistics. Σ|d| (L1) or Σd² (L2), exact in int64. One integer division per channel turns them into the
//     reciprocal ρ = 1/(c·σ₁ + ε) per unit of d (L2: an integer square root, then the division), so x̂ = d·ρ.
//     ρ has 31 significant bits; x̂ is never rounded on its own in a batch norm — γ·ρ is folded into one per-channel
//     multiplier a with ≥ 13 significant bits (|a|·max|d| ≈ 2^28..2^29), and the output is y = R((d·a) / 2^t) + β'
//     in int32 arithmetic. The layer norm, whose γ varies along its reduction axis, stores x̂ in 15-bit fixed point.
//   * Per-channel scalars (μ, σ₁, ρ, means of the backward) are integers with a power-of-two exponent
//     (mantissa ≤ 62 bits), computed with integer adds, multiplies, one division and one square root; floats appear
//     only as constants (c, ε, momentum), turned into dyadic numbers once.
//   * γ is quantized each step to a 15-bit multiplier (per channel for a batch norm, per tensor for a layer norm),
//     β to the output's exponent. The output is int32 with one exponent, chosen from per-channel bounds
//     (max|d|·|γρ| + |β|): scale invariance makes the range known without calibration.
//   * Backward: dx = R((u·a + w·b) / 2^t) + c' per element with u = R(dy, k_dy) the 16-bit working gradient,
//     w = sign(d) for L1 (a select, no multiply) or w = d for L2; per-channel a, b, c' from the exact sums Σdy,
//     Σdy·d and (L1, counted by the forward's Σ|d| pass) Σsign(d). dx is int32 with one exponent.
// Bounds: rows < 2^30 for a batch norm (every per-column sum is exact in int64, see qtrain/kernels/norm.h); F ≤ 2^16
// features for a layer norm (its row sums Σγdy·d < 2^45·F stay in int64).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"

namespace qtrain {

struct NormOptions {
  double eps = 1e-5;      // ε, in the input's real units (L1: added to c·σ₁; L2: added to the variance)
  double momentum = 0.1;  // running statistics: r ← (1 − momentum)·r + momentum·batch (batch norms only)
  // Batch norms only: relu(norm(x)) in one pass each way, the same values and gradients as a Relu layer after the
  // norm. The output carries its exact maximum (Tensor::nonnegative_max); the backward masks dy by the output sign,
  // recomputed from the saved working values.
  bool relu = false;
};

enum class NormKind : uint8_t { kL1, kL2 };

// Shared implementation of L1BatchNorm and L2BatchNorm.
class BatchNorm : public Layer {
 public:
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&gamma_, &beta_}; }
  std::vector<Tensor*> own_buffers() override { return {&running_mean_, &running_scale_}; }
  std::string name() const override;
  std::string layer_name() const override;

  NormKind kind() const { return kind_; }
  std::size_t channels() const { return channels_; }
  Param& gamma() { return gamma_; }  // 1×C, init 1, no weight decay
  Param& beta() { return beta_; }    // 1×C, init 0, no weight decay
  // Running statistics in real units: 1×C int32 mantissas with one exponent per channel. The scale is σ₁ (L1) or
  // the unbiased variance (L2). Initial values: mean 0, scale 1.
  Tensor& running_mean() { return running_mean_; }
  Tensor& running_scale() { return running_scale_; }
  const Tensor& running_mean() const { return running_mean_; }
  const Tensor& running_scale() const { return running_scale_; }

 protected:
  BatchNorm(NormKind kind, std::size_t channels, uint32_t layer_id, const NormOptions& opt);

 private:
  NormKind kind_;
  std::size_t channels_;
  uint32_t id_;
  NormOptions opt_;
  Param gamma_, beta_;
  Tensor running_mean_, running_scale_;
};

class L1BatchNorm final : public BatchNorm {
 public:
  explicit L1BatchNorm(std::size_t channels, uint32_t layer_id = 0, const NormOptions& opt = {})
      : BatchNorm(NormKind::kL1, channels, layer_id, opt) {}
};

class L2BatchNorm final : public BatchNorm {
 public:
  explicit L2BatchNorm(std::size_t channels, uint32_t layer_id = 0, const NormOptions& opt = {})
      : BatchNorm(NormKind::kL2, channels, layer_id, opt) {}
};

// L1 layer norm over the F features of each row (no running statistics: training and evaluation are the same).
class L1LayerNorm final : public Layer {
 public:
  explicit L1LayerNorm(std::size_t features, uint32_t layer_id = 0, const NormOptions& opt = {});
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&gamma_, &beta_}; }
  std::string name() const override;
  std::string layer_name() const override { return "l1ln" + std::to_string(id_); }

  std::size_t features() const { return features_; }
  Param& gamma() { return gamma_; }  // 1×F, init 1, no weight decay
  Param& beta() { return beta_; }    // 1×F, init 0, no weight decay

 private:
  std::size_t features_;
  uint32_t id_;
  NormOptions opt_;
  Param gamma_, beta_;
};

}  // namespace qtrain
