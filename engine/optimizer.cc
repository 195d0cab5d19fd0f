#include "engine/optimizer.h"

#include <algorithm>
#include <stdexcept>

#include "kernels/sgd_update.h"
#include "quant/error.h"
#include "quant/pow2.h"
#include "quant/rng.h"

namespace qtrain {

Sgd::Sgd(const SgdConfig& cfg) : cfg_(cfg) {
  if (!(cfg.momentum >= 0 && cfg.momentum < 1))
    throw UsageError("momentum " + std::to_string(cfg.momentum) + " is out of range [0, 1)");
  if (!(cfg.weight_decay >= 0 && cfg.weight_decay < 1))
    throw UsageError("weight decay " + std::to_string(cfg.weight_decay) + " is out of range [0, 1)");
}

void Sgd::step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed) {
  const quant::Dyadic mu = quant::to_dyadic(cfg_.momentum);
  const quant::Dyadic lambda = quant::to_dyadic(cfg_.weight_decay);
  const quant::Dyadic eta = quant::to_dyadic(lr);
  // Draws are a pure function of the element index, so the block size does not change the result.
  constexpr std::size_t kBlock = 1024;
  uint32_t draws[kBlock];
  for (Param* p : params) {
    if (!p->has_grad) continue;
    const std::size_t n = p->master.size();
    const std::size_t cols = p->master.cols();
    int32_t* w = p->master.data<int32_t>();
    int32_t* v = p->momentum.data<int32_t>();
    const int32_t* g = p->grad.data<int32_t>();
    const int e = p->master.exponent(), ev = p->momentum.exponent();
    // Independent streams for the two stochastic roundings: gradient alignment and weight update. (The momentum
    // buffer keeps 30 significant bits; nearest-even is plenty there.)
    auto stream = [&](uint32_t k) {
      return quant::CounterRng(seed, quant::stream_id(quant::Purpose::kRounding, step, 0x80000u | (p->id << 2) | k));
    };
    const quant::CounterRng rng_g = stream(0), rng_u = stream(2);
    if (p->grad.axis() == ScaleAxis::kCol) throw std::logic_error(p->name + ": per-column gradient exponents");
    scratch_.resize(n);
    int64_t* acc = scratch_.data();
    // v ← μ·v + g + λ·w, in int64 at the master exponent (kernels/sgd_update.h). A gradient finer than the
    // master step is rounded into it stochastically, so even gradients below one step reach the buffer on average.
    uint64_t vmax = 0;
    const std::size_t rows = p->master.rows();
    for (std::size_t r = 0; r < rows; ++r) {
      const int eg = p->grad.exponent_at(r, 0);
      for (std::size_t c0 = 0; c0 < cols; c0 += kBlock) {
        const std::size_t len = std::min(kBlock, cols - c0), i0 = r * cols + c0;
        if (eg < e) rng_g.fill_u32(i0, len, draws);  // draws are needed only for a gradient finer than E
        vmax = std::max(vmax, kernels::sgd_accumulate(v + i0, g + i0, p->decay ? w + i0 : nullptr, draws, len,
                                                      mu.mantissa, mu.shift, ev - e, eg - e, lambda.mantissa,
                                                      lambda.shift, acc + i0));
      }
    }
    const int sv = std::max(0, quant::bit_length(vmax) - 30);
    p->momentum.set_exponent(e + sv);
    // Store v; w ← w − η·v, with η·v rounded stochastically into the master exponent (draws needed only then).
    uint64_t wmax = 0;
    for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
      const std::size_t len = std::min(kBlock, n - i0);
      if (eta.shift - sv >= 0) rng_u.fill_u32(i0, len, draws);
      wmax = std::max(wmax, kernels::sgd_apply(acc + i0, w + i0, draws, len, eta.mantissa, eta.shift, sv, v + i0,
                                               acc + i0, w + i0));
    }
    // sgd_apply stored w at E already; a weight that reached 2^30 moves the master to a coarser exponent.
    const int sw = std::max(0, quant::bit_length(wmax) - 30);
    if (sw > 0) kernels::sgd_narrow(acc, n, sw, w);
    p->master.set_exponent(e + sw);
    p->has_grad = false;
    ++p->version;
  }
}

}  // namespace qtrain
