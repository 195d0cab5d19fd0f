#include "qtrain/engine/optim/optimizer.h"

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <utility>

#include "qtrain/engine/optim/adamw.h"
#include "qtrain/kernels/sgd_update.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"

namespace qtrain {

const char* optimizer_names() { return "sgd, adamw"; }

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const OptimizerConfig& config) {
  if (name == "sgd") return std::make_unique<Sgd>(config.sgd);
  if (name == "adamw") return std::make_unique<AdamW>(config.adamw);
  throw UsageError("unknown optimizer '" + name + "': valid optimizers are " + optimizer_names());
}

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

// Undo of the fused pass over [begin, end): on return w holds the old weights and acc the accumulators of pass 1.
// Pass 2 at sv = 0 stored v = acc exactly (|acc| < 2^30) and w' = w − u without clamping (fusable), where
// u = R_stoch(v·η) depends only on v and the draws: sgd_apply on the stored v with zero weights gives −u.
void undo_fused(const quant::Dyadic& eta, const quant::CounterRng& rng_u, std::size_t begin, std::size_t end,
                bool wide, const int32_t* v, int32_t* w, int64_t* acc) {
  uint32_t draws[kBlock];
  int64_t a[kBlock], neg_u[kBlock];
  int32_t zeros[kBlock] = {}, v_tmp[kBlock], w_tmp[kBlock];
  for (std::size_t i0 = begin; i0 < end; i0 += kBlock) {
    const std::size_t len = std::min(kBlock, end - i0);
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

// Tensors of at least this many blocks are split over the pool (in ranges of whole blocks).
constexpr std::size_t kMinSplitBlocks = 16;
// A rough single-thread cost of the fused pass per element (the SplitAdvisor's work estimate).
constexpr double kNsPerElement = 2.0;

// What one range's fused pass did (see Sgd::step).
struct RangeState {
  std::size_t begin = 0, end = 0;
  bool fused = false;  // still betting on sv = 0 at the end of the range: every block of it was applied
  bool wide = false;   // fused: acc holds the int64 new weights of the range (some |w'| ≥ 2^30)
  uint64_t vmax = 0, wmax = 0;
};

}  // namespace

void Sgd::step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed,
               kernels::ThreadPool* pool) {
  const quant::Dyadic mu = quant::to_dyadic(cfg_.momentum);
  const quant::Dyadic lambda = quant::to_dyadic(cfg_.weight_decay);
  const quant::Dyadic eta = quant::to_dyadic(lr);
  const bool can_fuse = fusable(eta);
  table_.begin_step();
  for (Param* p : params) {
    if (!p->has_grad) continue;
    // A new buffer is zeros at the master exponent: what a fresh parameter's buffer always was (init_uniform), so
    // the bits of a run do not depend on when the buffer is made.
    Tensor& momentum = *table_.of(*p, [&](std::size_t) { return p->master.exponent(); });
    const std::size_t n = p->master.size();
    int32_t* w = p->master.data<int32_t>();
    int32_t* v = momentum.data<int32_t>();
    const int32_t* g = p->grad.data<int32_t>();
    const int e = p->master.exponent(), ev = momentum.exponent();
    // Independent streams for the two stochastic roundings: gradient alignment and weight update. (The momentum
    // buffer keeps 30 significant bits; nearest-even is plenty there.)
    auto stream = [&](uint32_t k) {
      return quant::CounterRng(
          seed, quant::StreamKey{.purpose = quant::Purpose::kUpdate, .owner = p->id, .slot = k, .step = step});
    };
    const quant::CounterRng rng_g = stream(0), rng_u = stream(2);
    if (p->grad.axis() == ScaleAxis::kCol) throw std::logic_error(p->name + ": per-column gradient exponents");
    scratch_.resize(n);
    int64_t* acc = scratch_.data();
    const bool per_row = p->grad.axis() == ScaleAxis::kRow;
    const std::size_t rows = per_row ? p->master.rows() : 1, cols = per_row ? p->master.cols() : n;

    // A large tensor is split into ranges of whole blocks, one per thread. Every pass below is element-wise and
    // its draws are a pure function of the element index, so the split changes only the order of the work.
    const std::size_t blocks = (n + kBlock - 1) / kBlock;
    std::size_t ranges = 1;
    if (pool != nullptr && pool->threads() > 1 && blocks >= kMinSplitBlocks &&
        pool->worth_splitting(kNsPerElement * static_cast<double>(n)))
      ranges = std::min(blocks, pool->threads());
    RangeState states[64];
    ranges = std::min<std::size_t>(ranges, 64);
    for (std::size_t t = 0; t < ranges; ++t) {
      states[t].begin = std::min(n, t * blocks / ranges * kBlock);
      states[t].end = std::min(n, (t + 1) * blocks / ranges * kBlock);
    }
    auto for_ranges = [&](const std::function<void(RangeState&)>& fn) {
      if (ranges == 1) {
        fn(states[0]);
        return;
      }
      pool->parallel_for(ranges, 1, [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) fn(states[t]);
      });
    };

    // Pass 1: v ← μ·v + g + λ·w, in int64 at the master exponent (qtrain/kernels/sgd_update.h). A gradient finer than
    // the master step is rounded into it stochastically, so even gradients below one step reach the buffer on
    // average. The momentum is stored at E + sv, sv = max(0, bit_length(max |acc|) − 30), which depends on the
    // whole tensor; almost always sv = 0. The fused pass bets on it: each block is accumulated into L1 and, while
    // every block so far (of the range) leaves sv = 0, immediately stored and applied (pass 2 with sv = 0), so
    // the tensor is read and written once. A block that needs sv > 0 ends the bet: the range's applied blocks
    // are undone exactly (their acc is the stored v; their old weight is w_new + u, u recomputed from the same
    // draws), the rest is accumulated into the tensor-sized scratch and pass 2 runs as in the two-pass algorithm
    // — after the other ranges' applied blocks are undone too.
    for_ranges([&](RangeState& st) {
      uint32_t draws_g[kBlock], draws_u[kBlock];
      int64_t block_acc[kBlock];  // the fused pass's accumulators (L1)
      st.fused = can_fuse;
      for (std::size_t i = st.begin; i < st.end;) {
        // A run of rows with one gradient exponent is one contiguous range of elements.
        const std::size_t r0 = i / cols;
        const int eg = p->grad.exponent_at(r0, 0);
        std::size_t r1 = r0 + 1;
        while (r1 < rows && p->grad.exponent_at(r1, 0) == eg) ++r1;
        const std::size_t end = std::min(r1 * cols, st.end);
        for (std::size_t i0 = i; i0 < end; i0 += kBlock) {
          const std::size_t len = std::min(kBlock, end - i0);
          if (eg < e) rng_g.fill_u32(i0, len, draws_g);  // draws are needed only for a gradient finer than E
          int64_t* dst = st.fused ? block_acc : acc + i0;
          const uint64_t bmax =
              kernels::sgd_accumulate(v + i0, g + i0, p->decay ? w + i0 : nullptr, draws_g, len, mu.mantissa,
                                      mu.shift, ev - e, eg - e, lambda.mantissa, lambda.shift, dst);
          st.vmax = std::max(st.vmax, bmax);
          if (!st.fused) continue;
          if (quant::bit_length(st.vmax) > 30) {  // sv > 0: back to the two-pass algorithm
            undo_fused(eta, rng_u, st.begin, i0, st.wide, v, w, acc);
            std::copy(block_acc, block_acc + len, acc + i0);
            st.fused = false;
            continue;
          }
          if (eta.shift >= 0) rng_u.fill_u32(i0, len, draws_u);
          st.wmax = std::max(st.wmax, kernels::sgd_apply(block_acc, w + i0, draws_u, len, eta.mantissa, eta.shift,
                                                         0, v + i0, st.wide ? acc + i0 : block_acc, w + i0));
          if (!st.wide && quant::bit_length(st.wmax) > 30) {
            // sgd_narrow will need every new weight in int64: the earlier ones fit 30 bits, so w holds them.
            st.wide = true;
            std::copy(w + st.begin, w + i0, acc + st.begin);
            std::copy(block_acc, block_acc + len, acc + i0);
          }
        }
        i = end;
      }
    });
    uint64_t vmax = 0, wmax = 0;
    for (std::size_t t = 0; t < ranges; ++t) vmax = std::max(vmax, states[t].vmax);
    const int sv = std::max(0, quant::bit_length(vmax) - 30);
    if (can_fuse && sv == 0) {
      // Every range kept the bet. A weight that reached 2^30 anywhere needs every new weight in int64.
      for (std::size_t t = 0; t < ranges; ++t) wmax = std::max(wmax, states[t].wmax);
      if (quant::bit_length(wmax) > 30) {
        for (std::size_t t = 0; t < ranges; ++t) {
          const RangeState& st = states[t];
          if (!st.wide) std::copy(w + st.begin, w + st.end, acc + st.begin);
        }
      }
    } else {
      // Pass 2: store v; w ← w − η·v, with η·v rounded stochastically into the master exponent (draws needed
      // only then). The ranges that kept the bet (their own vmax fits) are undone first.
      for_ranges([&](RangeState& st) {
        if (st.fused) undo_fused(eta, rng_u, st.begin, st.end, st.wide, v, w, acc);
        uint32_t draws_u[kBlock];
        st.wmax = 0;
        for (std::size_t i0 = st.begin; i0 < st.end; i0 += kBlock) {
          const std::size_t len = std::min(kBlock, st.end - i0);
          if (eta.shift - sv >= 0) rng_u.fill_u32(i0, len, draws_u);
          st.wmax = std::max(st.wmax, kernels::sgd_apply(acc + i0, w + i0, draws_u, len, eta.mantissa, eta.shift,
                                                         sv, v + i0, acc + i0, w + i0));
        }
      });
      for (std::size_t t = 0; t < ranges; ++t) wmax = std::max(wmax, states[t].wmax);
    }
    momentum.set_exponent(e + sv);
    // sgd_apply stored w at E already; a weight that reached 2^30 moves the master to a coarser exponent.
    const int sw = std::max(0, quant::bit_length(wmax) - 30);
    if (sw > 0) {
      for_ranges([&](RangeState& st) {
        kernels::sgd_narrow(acc + st.begin, st.end - st.begin, sw, w + st.begin);
      });
    }
    p->master.set_exponent(e + sw);
    p->has_grad = false;
  }
}

std::vector<NamedState> Sgd::state() const { return table_.state(); }

void Sgd::check_state(const NamedState& s, const Param& p) const {
  constexpr int kMaxMomentumOffset = 62;  // |exponent(momentum) − exponent(master)|: the update's shift bound
  table_.check(s, p, kMaxMomentumOffset);
}

void Sgd::load_state(std::vector<NamedState> state, const std::vector<Param*>& params) {
  table_.load(std::move(state), params, [this](const NamedState& s, const Param& p) { check_state(s, p); });
}

}  // namespace qtrain
