// The quantized GEMM operator that Linear and Conv2d share: Y = X_q · W_qᵀ, where X_q is the layer input (Linear)
// or its im2col patches (Conv2d), and the backward that goes with it.
//
// Forward   X (int32 or int8) → X_q: b_a-bit int8, one exponent e_x, the finest power of two covering max|x|
//                               (nearest-even; the unsigned range [0, 2^b−1] when the input is non-negative)
//           W (int32 master)  → W_q: b_w-bit int8, one exponent per output channel e_w[c] (nearest-even), or one
//                               for the whole matrix (per-tensor granularity: every e_w[c] is that one),
//                               quantized once per (parameter version, b_w, granularity) and shared by every
//                               batch of that version (packed once for its GEMMs when it feeds more than one)
//           Y[n,c] = Σ_k X_q[n,k]·W_q[c,k]   int32 accumulator, exponent e_x + e_w[c]; exact while k ≤ kMaxReduction
// Backward  dY (int32, one exponent) → ShiftQuant: dY_q (b_g bits, N_G power-of-two channel groups, stochastic)
//           dX = dY_shifted · W_aligned      one int8 GEMM reducing over the m output channels (m ≤ kMaxReduction),
//                                            exponent e0 − (N_G−1) + E_w; exact when the e_w span ≤ int8 headroom
//           dW[c,:] = Σ_n dY_q[n,c]·X_q[n,:]  int8 GEMMs over chunks of ≤ kMaxReduction rows (each chunk exact in
//                                            int32), chunks summed exactly in int64, exponent e0 − k_c + e_x per row
//                                            (+ a narrowing shift only if a sum exceeds int32)
// Float formula: y = Q(x)·Q(W)ᵀ, dx = Q_g(dy)·Q(W), dW = Q_g(dy)ᵀ·Q(x).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/core/param.h"
#include "qtrain/engine/core/quant_policy.h"
#include "qtrain/engine/core/tensor.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

// The products of one weights operand W[m × k] (the same W on every call; its owner keeps it alive): forward
// C = A · Wᵀ or dgrad C = A · W. The first product packs W inside the call, a cache-sized block at a time while it
// is hot, like any product; from the second on W is packed once (kernels::PackedWeights) and reused. So W that feeds
// one product (a training step's forward or dgrad at a small batch) costs nothing extra, and W that feeds many
// (the batches of an evaluation, the blocks of an im2col convolution) is packed once instead of once per product.
// Results are bit-identical either way. Not thread-safe: called by the one thread that drives the pool.
class WeightProducts {
 public:
  explicit WeightProducts(kernels::PackedWeights::Use use) : use_(use) {}
  // C[n × m] (forward, A[n × k], then the epilogue) or C[n × k] (dgrad, A[n × m]; the epilogue must be empty).
  void multiply(const int8_t* a, const int8_t* w, std::size_t m, std::size_t k, int32_t* c, std::size_t n,
                kernels::ThreadPool* pool, const kernels::GemmEpilogue& epilogue = {});

 private:
  kernels::PackedWeights::Use use_;
  bool used_ = false;
  kernels::PackedWeights packed_;
};

// W_q of one parameter version at one (bit-width, granularity), and its two GEMMs, whose operands are packed once per
// version when they feed more than one product (WeightProducts).
struct QuantizedWeights {
  Tensor q;                     // out × in int8, one exponent per row (output channel): the forward operand
  std::vector<int8_t> aligned;  // the rows brought to one exponent (quant::align_rows): the dgrad operand
  int aligned_exponent = 0;
  uint64_t version = 0;  // the Param::version it was quantized from
  int bits = 0;          // and the weight bits and granularity
  WeightGranularity granularity = WeightGranularity::kPerChannel;

  // Y[n × out] = X_q · W_qᵀ (int32, exponent e_x + e_w[c]), then the epilogue (bias at those exponents, ReLU).
  void forward(const int8_t* x, int32_t* y, std::size_t n, kernels::ThreadPool* pool,
               const kernels::GemmEpilogue& epilogue = {}) const {
    forward_.multiply(x, q.data<int8_t>(), q.rows(), q.cols(), y, n, pool, epilogue);
  }
  // dX[n × in] = dY_shifted · W_aligned (dY_shifted n × out).
  void dgrad(const int8_t* dy, int32_t* dx, std::size_t n, kernels::ThreadPool* pool) const {
    dgrad_.multiply(dy, aligned.data(), q.rows(), q.cols(), dx, n, pool);
  }

 private:
  mutable WeightProducts forward_{kernels::PackedWeights::Use::kForward};
  mutable WeightProducts dgrad_{kernels::PackedWeights::Use::kDgrad};
};

// X as b-bit int8 with one exponent. A signed 8-bit int8 input with one exponent (normalized pixels) passes
// unchanged. Per-column input exponents are allowed (per-channel layer outputs; they always use the covering
// step), per-row ones are not.
// With groups > 1 (and one input exponent) the columns get power-of-two groups in the int8 carrier.
// The passes over x may be split over `pool` (the step's); the result does not depend on it.
Tensor quantize_activation(const Tensor& x, int bits, bool is_signed, quant::ScaleRule scale = quant::ScaleRule::kCover,
                           int groups = 1, kernels::ThreadPool* pool = nullptr);

// The quantizers of one layer. Its own settings (config()) apply unless the step's policy overrides them: a layer
// resolves its configuration once per call (resolve) and hands it to the quantizers, and its backward closure keeps
// that configuration and the W_q it used.
class QGemmOp {
 public:
  // At most this many W_q per parameter version stay cached (two arrays of out × in int8 each, plus their packed
  // forms once used twice): enough for a sandwich step's three bit-widths (highest, random, lowest) to hit the
  // cache in every pass after the first; a fourth configuration evicts the least recently used.
  static constexpr std::size_t kWeightCacheEntries = 4;

  explicit QGemmOp(const QGemmConfig& cfg);
  const QGemmConfig& config() const { return cfg_; }  // the layer's own settings
  // The configuration of this call: config() with ctx.policy's overrides for (layer, ctx.pass), validated (throws
  // UsageError naming the layer and the key).
  QGemmConfig resolve(const StepContext& ctx, const std::string& layer) const {
    return resolve_checked(ctx.policy, cfg_, layer, ctx.pass);
  }

  static Tensor quantize_input(const Tensor& x, const QGemmConfig& c, kernels::ThreadPool* pool = nullptr) {
    return quantize_activation(x, c.act_bits, c.signed_input, c.scale, c.act_groups, pool);
  }
  Tensor quantize_input(const Tensor& x, kernels::ThreadPool* pool = nullptr) const {
    return quantize_input(x, cfg_, pool);
  }
  // The same for a Var's value, reusing the Var's quantized copy when it was made with the same settings.
  std::shared_ptr<const Tensor> quantize_input(Var& x, const QGemmConfig& c, kernels::ThreadPool* pool = nullptr) const;
  std::shared_ptr<const Tensor> quantize_input(Var& x, kernels::ThreadPool* pool = nullptr) const {
    return quantize_input(x, cfg_, pool);
  }
  // W_q of the parameter's current version at c's weight bits and granularity (quantized on the first call after
  // each update, or for a configuration not among the cached ones). Backward closures hold the returned pointer,
  // so a later requantization never changes what an earlier step's backward sees.
  std::shared_ptr<const QuantizedWeights> weights(const Param& w, const QGemmConfig& c);
  std::shared_ptr<const QuantizedWeights> weights(const Param& w) { return weights(w, cfg_); }
  // ShiftQuant of dY (rows × out, one exponent) at c's gradient bits and N_G, with the rounding stream of layer
  // `layer`'s output gradient in this step and pass.
  quant::ShiftQuantized quantize_grad(const StepContext& ctx, uint32_t layer, const QGemmConfig& c,
                                      const Tensor& dy) const;
  quant::ShiftQuantized quantize_grad(const StepContext& ctx, uint32_t layer, const Tensor& dy) const {
    return quantize_grad(ctx, layer, cfg_, dy);
  }

 private:
  QGemmConfig cfg_;
  std::vector<std::shared_ptr<const QuantizedWeights>> cache_;  // one version; most recently used first
};

// Rows [r0, r1) of dX = dY_shifted · W_aligned into out ((r1 − r0) × in int32, exponent qgemm_dgrad_exponent).
void qgemm_dgrad_rows(const quant::ShiftQuantized& g, const QuantizedWeights& w, std::size_t r0, std::size_t r1,
                      int32_t* out, kernels::ThreadPool* pool);
int qgemm_dgrad_exponent(const quant::ShiftQuantized& g, const QuantizedWeights& w);
// All of dX (g.rows × in, one exponent).
Tensor qgemm_dgrad(const quant::ShiftQuantized& g, const QuantizedWeights& w, kernels::ThreadPool* pool);

// dW = dY_qᵀ · X_q accumulated over row chunks: add() runs one int8 GEMM per chunk (≤ kMaxReduction rows, so the
// int32 accumulator is exact) and sums the chunks in int32 while at most kMaxReduction rows are reduced in total
// (still exact), in int64 beyond (exact).
class WgradAccumulator {
 public:
  WgradAccumulator(std::size_t out, std::size_t in) : m_(out), k_(in) {}
  // Adds Σ_{n in [r0, r1)} dY_q[n,:]ᵀ · x_rows[n − r0, :]; x_rows holds rows r0..r1 of X_q (in columns each).
  void add(const quant::ShiftQuantized& g, std::size_t r0, std::size_t r1, const int8_t* x_rows,
           kernels::ThreadPool* pool);
  // dW (out × in int32) with per-row exponents e0 − k_c + e_x (+ the narrowing shift of the row, if any).
  Tensor finish(const quant::ShiftQuantized& g, int ex);

 private:
  std::size_t m_, k_;
  std::size_t chunks_ = 0;
  std::size_t rows_ = 0;      // rows reduced so far
  Tensor first_;              // int32 sums while rows_ ≤ kMaxReduction (exact)
  std::vector<int64_t> sum_;  // int64 sums once more rows than that are reduced
};

// dW for a whole X_q (g.rows × in), in chunks of at most max_rows (≤ kMaxReduction) rows.
Tensor qgemm_wgrad(const quant::ShiftQuantized& g, const Tensor& xq, kernels::ThreadPool* pool,
                   std::size_t max_rows = kernels::kMaxReduction);

}  // namespace qtrain
