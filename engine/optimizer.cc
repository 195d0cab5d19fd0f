#include "engine/optimizer.h"

#include <algorithm>
#include <stdexcept>

#include "quant/error.h"
#include "quant/pow2.h"
#include "quant/rng.h"

namespace qtrain {

namespace {
constexpr int64_t kSatLimit = int64_t{1} << 62;

// x·2^s for s ≥ 0, saturating at ±2^62 (reached only by a diverged run; the caller's range checks report it).
int64_t shl_sat(int64_t x, int s) {
  if (x == 0) return 0;
  const uint64_t mag = static_cast<uint64_t>(x < 0 ? -x : x);
  if (s >= 62 || quant::bit_length(mag) + s > 62) return x < 0 ? -kSatLimit : kSatLimit;
  return x * (int64_t{1} << s);
}

// x·2^(from − to): exact left shift or rounded right shift.
int64_t move_exponent(int64_t x, int from, int to) {
  return from >= to ? shl_sat(x, from - to) : quant::shift_round_even(x, to - from);
}

uint64_t magnitude(int64_t v) { return static_cast<uint64_t>(v < 0 ? -v : v); }
}  // namespace

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
  constexpr std::size_t kBlock = 256;
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
    // v ← μ·v + g + λ·w, in int64 at the master exponent. A gradient finer than the master step is rounded into
    // it stochastically, so even gradients below one step reach the buffer on average.
    uint64_t vmax = 0;
    const std::size_t rows = p->master.rows();
    for (std::size_t r = 0; r < rows; ++r) {
      const int eg = p->grad.exponent_at(r, 0);
      for (std::size_t c0 = 0; c0 < cols; c0 += kBlock) {
        const std::size_t len = std::min(kBlock, cols - c0), i0 = r * cols + c0;
        if (eg < e) rng_g.fill_u32(i0, len, draws);  // draws are needed only for a gradient finer than E
        for (std::size_t j = 0; j < len; ++j) {
          const std::size_t i = i0 + j;
          int64_t acc = move_exponent(quant::shift_round_even(int64_t{v[i]} * mu.mantissa, mu.shift), ev, e);
          acc += eg >= e ? shl_sat(g[i], eg - e) : quant::shift_round_stochastic(g[i], e - eg, draws[j]);
          if (p->decay) acc += quant::shift_round_even(int64_t{w[i]} * lambda.mantissa, lambda.shift);
          scratch_[i] = std::clamp(acc, -kSatLimit, kSatLimit);
          vmax = std::max(vmax, magnitude(scratch_[i]));
        }
      }
    }
    const int sv = std::max(0, quant::bit_length(vmax) - 30);
    p->momentum.set_exponent(e + sv);
    // w ← w − η·v, with η·v rounded stochastically into the master exponent.
    uint64_t wmax = 0;
    for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
      const std::size_t len = std::min(kBlock, n - i0);
      rng_u.fill_u32(i0, len, draws);
      for (std::size_t j = 0; j < len; ++j) {
        const std::size_t i = i0 + j;
        v[i] = static_cast<int32_t>(quant::shift_round_even(scratch_[i], sv));
        const int64_t prod = int64_t{v[i]} * eta.mantissa, su = eta.shift - sv;
        const int64_t u = su >= 0 ? quant::shift_round_stochastic(prod, static_cast<int>(su), draws[j])
                                  : shl_sat(prod, static_cast<int>(-su));
        scratch_[i] = std::clamp(int64_t{w[i]} - u, -kSatLimit, kSatLimit);
        wmax = std::max(wmax, magnitude(scratch_[i]));
      }
    }
    const int sw = std::max(0, quant::bit_length(wmax) - 30);
    for (std::size_t i = 0; i < n; ++i) w[i] = static_cast<int32_t>(quant::shift_round_even(scratch_[i], sw));
    p->master.set_exponent(e + sw);
    p->has_grad = false;
    ++p->version;
  }
}

}  // namespace qtrain
