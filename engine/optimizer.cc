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

namespace {

// Draw blocks; the fused pass also works block by block (the int64 accumulators of one block stay in L1).
constexpr std::size_t kBlock = 1024;

// True when the new weights of a pass with v_store_shift = 0 are never clamped at ±2^62, so that
// w_old = w_new + u holds exactly (the undo of the fused pass): |v| < 2^30 after a pass at sv = 0 and
// |w_old| < 2^31, so |u| ≤ 2^61 suffices.
bool fusable(const quant::Dyadic& eta) {
  if (eta.mantissa < 0 || eta.mantissa >= (int64_t{1} << 31)) return false;
  if (eta.shift >= 0) return true;  // |u| ≤ |v·η_m| + 1 ≤ 2^61
  return quant::bit_length(static_cast<uint64_t>(eta.mantissa)) + 30 - eta.shift <= 61;
}

// Undo of the fused pass over [0, n): on return w holds the old weights and acc the accumulators of pass 1.
// Pass 2 at sv = 0 stored v = acc exactly (|acc| < 2^30) and w' = w − u without clamping (fusable), where
// u = R_stoch(v·η) depends only on v and the draws: sgd_apply on the stored v with zero weights gives −u.
void undo_fused(const quant::Dyadic& eta, const quant::CounterRng& rng_u, std::size_t n, bool wide, const int32_t* v,
                int32_t* w, int64_t* acc) {
  uint32_t draws[kBlock];
  int64_t a[kBlock], neg_u[kBlock];
  int32_t zeros[kBlock] = {}, v_tmp[kBlock], w_tmp[kBlock];
  for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::size_t len = std::min(kBlock, n - i0);
    if (eta.shift >= 0) rng_u.fill_u32(i0, len, draws);
    std::copy(v + i0, v + i0 + len, a);
    kernels::sgd_apply(a, zeros, draws, len, eta.mantissa, eta.shift, 0, v_tmp, neg_u, w_tmp);
    for (std::size_t j = 0; j < len; ++j) {
      const int64_t w_new = wide ? acc[i0 + j] : int64_t{w[i0 + j]};
      w[i0 + j] = static_cast<int32_t>(w_new - neg_u[j]);
      acc[i0 + j] = a[j];
    }
  }
}

}  // namespace

void Sgd::step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed) {
  const quant::Dyadic mu = quant::to_dyadic(cfg_.momentum);
  const quant::Dyadic lambda = quant::to_dyadic(cfg_.weight_decay);
  const quant::Dyadic eta = quant::to_dyadic(lr);
  const bool can_fuse = fusable(eta);
  // Draws are a pure function of the element index, so the block size does not change the result.
  uint32_t draws_g[kBlock], draws_u[kBlock];
  int64_t block_acc[kBlock];  // the fused pass's accumulators (L1)
  for (Param* p : params) {
    if (!p->has_grad) continue;
    const std::size_t n = p->master.size();
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
    // Pass 1: v ← μ·v + g + λ·w, in int64 at the master exponent (kernels/sgd_update.h). A gradient finer than
    // the master step is rounded into it stochastically, so even gradients below one step reach the buffer on
    // average. The momentum is stored at E + sv, sv = max(0, bit_length(max |acc|) − 30), which depends on the
    // whole tensor; almost always sv = 0. The fused pass bets on it: each block is accumulated into L1 and, while
    // every block so far leaves sv = 0, immediately stored and applied (pass 2 with sv = 0), so the tensor is
    // read and written once. A block that needs sv > 0 ends the bet: the applied blocks are undone exactly
    // (their acc is the stored v; their old weight is w_new + u, u recomputed from the same draws), the rest is
    // accumulated into the tensor-sized scratch and pass 2 runs as in the two-pass algorithm.
    bool fused = can_fuse;
    bool wide = false;  // fused: scratch holds the int64 new weights of the applied blocks (some |w'| ≥ 2^30)
    uint64_t vmax = 0, wmax = 0;
    const bool per_row = p->grad.axis() == ScaleAxis::kRow;
    const std::size_t rows = per_row ? p->master.rows() : 1, cols = per_row ? p->master.cols() : n;
    for (std::size_t r0 = 0; r0 < rows;) {
      // A run of rows with one gradient exponent is one contiguous range of elements.
      const int eg = p->grad.exponent_at(r0, 0);
      std::size_t r1 = r0 + 1;
      while (r1 < rows && p->grad.exponent_at(r1, 0) == eg) ++r1;
      const std::size_t end = r1 * cols;
      for (std::size_t i0 = r0 * cols; i0 < end; i0 += kBlock) {
        const std::size_t len = std::min(kBlock, end - i0);
        if (eg < e) rng_g.fill_u32(i0, len, draws_g);  // draws are needed only for a gradient finer than E
        int64_t* dst = fused ? block_acc : acc + i0;
        const uint64_t bmax =
            kernels::sgd_accumulate(v + i0, g + i0, p->decay ? w + i0 : nullptr, draws_g, len, mu.mantissa, mu.shift,
                                    ev - e, eg - e, lambda.mantissa, lambda.shift, dst);
        vmax = std::max(vmax, bmax);
        if (!fused) continue;
        if (quant::bit_length(vmax) > 30) {  // sv > 0: back to the two-pass algorithm
          undo_fused(eta, rng_u, i0, wide, v, w, acc);
          std::copy(block_acc, block_acc + len, acc + i0);
          fused = false;
          continue;
        }
        if (eta.shift >= 0) rng_u.fill_u32(i0, len, draws_u);
        wmax = std::max(wmax, kernels::sgd_apply(block_acc, w + i0, draws_u, len, eta.mantissa, eta.shift, 0, v + i0,
                                                 wide ? acc + i0 : block_acc, w + i0));
        if (!wide && quant::bit_length(wmax) > 30) {
          // sgd_narrow will need every new weight in int64: the earlier ones fit 30 bits, so w holds them exactly.
          wide = true;
          std::copy(w, w + i0, acc);
          std::copy(block_acc, block_acc + len, acc + i0);
        }
      }
      r0 = r1;
    }
    int sv = 0;
    if (!fused) {
      sv = std::max(0, quant::bit_length(vmax) - 30);
      // Pass 2: store v; w ← w − η·v, with η·v rounded stochastically into the master exponent (draws needed
      // only then).
      wmax = 0;
      for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
        const std::size_t len = std::min(kBlock, n - i0);
        if (eta.shift - sv >= 0) rng_u.fill_u32(i0, len, draws_u);
        wmax = std::max(wmax, kernels::sgd_apply(acc + i0, w + i0, draws_u, len, eta.mantissa, eta.shift, sv, v + i0,
                                                 acc + i0, w + i0));
      }
    }
    p->momentum.set_exponent(e + sv);
    // sgd_apply stored w at E already; a weight that reached 2^30 moves the master to a coarser exponent.
    const int sw = std::max(0, quant::bit_length(wmax) - 30);
    if (sw > 0) kernels::sgd_narrow(acc, n, sw, w);
    p->master.set_exponent(e + sw);
    p->has_grad = false;
    ++p->version;
  }
}

}  // namespace qtrain
