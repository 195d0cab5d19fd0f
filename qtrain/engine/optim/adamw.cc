#include "qtrain/engine/optim/adamw.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <utility>

#include "qtrain/kernels/adamw_update.h"
#include "qtrain/kernels/rounding.h"
#include "qtrain/kernels/sgd_update.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"

namespace qtrain {
namespace {

constexpr int kMaxStateOffset = 250;  // |exponent(m or v) − exponent(master)| a checkpoint may hold
constexpr std::size_t kBlock = 1024;  // draw blocks; tensors of kMinSplitBlocks blocks or more are split
constexpr std::size_t kMinSplitBlocks = 16;
constexpr double kNsPerElement = 20.0;  // a rough single-thread cost of both passes (the pool's work estimate)

std::string number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

// β = a/2^s and 1 − β = c/2^s, c = 1 − β with up to 24 significant bits and s ≤ 31 (so a·m < 2^61).
struct BetaSplit {
  int64_t a = 0, c = 0;
  int s = 0;
  double beta() const { return std::ldexp(static_cast<double>(a), -s); }
};
BetaSplit split_beta(double beta) {
  const double one_minus = 1.0 - beta;
  int e2 = 0;
  std::frexp(one_minus, &e2);  // one_minus = f·2^e2, f ∈ [½, 1)
  const quant::Dyadic c = quant::to_dyadic(one_minus, std::min(24, 31 + e2));
  BetaSplit b;
  b.c = c.mantissa;
  b.s = c.shift;
  b.a = (int64_t{1} << b.s) - b.c;
  return b;
}

// x^t by binary exponentiation: IEEE multiplications only, the same bits everywhere.
double power(double x, uint64_t t) {
  double r = 1.0;
  while (t != 0) {
    if (t & 1) r *= x;
    x *= x;
    t >>= 1;
  }
  return r;
}

void check_beta(double beta, const char* flag) {
  if (!(beta >= 0 && 1.0 - beta >= 1e-6))
    throw UsageError(std::string(flag) + " " + number(beta) + " is out of range [0, 1 - 1e-6] (AdamW's moment decay)");
}

}  // namespace

AdamW::AdamW(const AdamWConfig& cfg) : cfg_(cfg) {
  check_beta(cfg.beta1, "--beta1");
  check_beta(cfg.beta2, "--beta2");
  if (!(cfg.eps > 0 && cfg.eps <= 1))
    throw UsageError("--adam-eps " + number(cfg.eps) + " is out of range (0, 1]");
  if (!(cfg.weight_decay >= 0 && cfg.weight_decay < 1))
    throw UsageError("--wd " + number(cfg.weight_decay) + " is out of range [0, 1) (AdamW's decoupled weight decay)");
}

void AdamW::step(const std::vector<Param*>& params, double lr, uint64_t step, uint64_t seed,
                 kernels::ThreadPool* pool) {
  const BetaSplit b1 = split_beta(cfg_.beta1), b2 = split_beta(cfg_.beta2);
  const uint64_t t = step + 1;
  const double bc1 = 1.0 - power(b1.beta(), t), bc2 = 1.0 - power(b2.beta(), t);
  const double sqrt_bc2 = std::sqrt(bc2);  // IEEE square root: correctly rounded everywhere
  const double k_step = lr * sqrt_bc2 / bc1, eps_b = cfg_.eps * sqrt_bc2;
  const quant::Dyadic decay = quant::to_dyadic(lr * cfg_.weight_decay, 24);
  table_.begin_step();
  for (Param* p : params) {
    if (!p->has_grad) continue;
    if (p->grad.axis() == ScaleAxis::kCol) throw std::logic_error(p->name + ": per-column gradient exponents");
    Tensor* st = table_.of(*p, [&](std::size_t) { return p->master.exponent(); });
    Tensor &m_t = st[0], &v_t = st[1];
    const std::size_t n = p->master.size();
    const bool per_row = p->grad.axis() == ScaleAxis::kRow;
    const std::size_t rows = per_row ? p->master.rows() : 1, cols = per_row ? p->master.cols() : n;
    int32_t* w = p->master.data<int32_t>();
    int32_t* m = m_t.data<int32_t>();
    int32_t* v = v_t.data<int32_t>();
    const int32_t* g = p->grad.data<int32_t>();
    const int e = p->master.exponent(), em = m_t.exponent(), ev = v_t.exponent();

    // The working exponents: the largest possible term of each moment, from the tensors' maxima (exact bounds).
    uint64_t max_m = 0, max_v = 0;
    for (std::size_t i = 0; i < n; ++i) {
      max_m = std::max(max_m, kernels::magnitude(m[i]));
      max_v = std::max(max_v, kernels::magnitude(v[i]));
    }
    int top_m = max_m != 0 ? em + kernels::bit_length(max_m) : INT_MIN;
    int top_v = max_v != 0 ? ev + kernels::bit_length(max_v) : INT_MIN;
    for (std::size_t r = 0; r < rows; ++r) {
      uint64_t mg = 0;
      for (std::size_t c = 0; c < cols; ++c) mg = std::max(mg, kernels::magnitude(g[r * cols + c]));
      if (mg == 0) continue;
      const int eg = p->grad.exponent_at(r, 0), bl = kernels::bit_length(mg);
      top_m = std::max(top_m, eg + bl);
      top_v = std::max(top_v, 2 * eg + 2 * bl);
    }
    const int zm = top_m == INT_MIN ? em : top_m - 62, zv = top_v == INT_MIN ? ev : top_v - 62;
    const kernels::AdamMoments km{b1.a, b1.c, b1.s, b2.a, b2.c, b2.s, em - b1.s - zm, ev - b2.s - zv};

    mz_.resize(n);
    vz_.resize(n);
    int64_t* mz = mz_.data();
    int64_t* vz = vz_.data();

    // Ranges of whole blocks, one per thread (every pass is element-wise, its draws keyed by element index).
    const std::size_t blocks = (n + kBlock - 1) / kBlock;
    std::size_t ranges = 1;
    if (pool != nullptr && pool->threads() > 1 && blocks >= kMinSplitBlocks &&
        pool->worth_splitting(kNsPerElement * static_cast<double>(n)))
      ranges = std::min<std::size_t>({blocks, pool->threads(), 64});
    auto range_begin = [&](std::size_t r) { return std::min(n, r * blocks / ranges * kBlock); };
    auto for_ranges = [&](const std::function<void(std::size_t, std::size_t, std::size_t)>& fn) {
      if (ranges == 1) return fn(0, 0, n);
      pool->parallel_for(ranges, 1, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) fn(r, range_begin(r), range_begin(r + 1));
      });
    };
    uint64_t part_m[64] = {}, part_v[64] = {}, part_w[64] = {};

    // Pass 1: the exact new moments at Z_m, Z_v (by runs of rows with one gradient exponent).
    for_ranges([&](std::size_t r, std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end;) {
        const std::size_t r0 = i / cols;
        const int eg = p->grad.exponent_at(r0, 0);
        std::size_t r1 = r0 + 1;
        while (r1 < rows && p->grad.exponent_at(r1, 0) == eg) ++r1;
        const std::size_t stop = std::min(r1 * cols, end);
        kernels::adamw_moments(m + i, v + i, g + i, stop - i, km, eg - b1.s - zm, 2 * eg - b2.s - zv, mz + i, vz + i,
                               &part_m[r], &part_v[r]);
        i = stop;
      }
    });
    uint64_t new_max_m = 0, new_max_v = 0;
    for (std::size_t r = 0; r < ranges; ++r) {
      new_max_m = std::max(new_max_m, part_m[r]);
      new_max_v = std::max(new_max_v, part_v[r]);
    }
    // The state's new exponents: the finest that hold the largest values in 30 bits.
    const int em2 = zm + std::max(0, kernels::bit_length(new_max_m) - 30);
    const int ev2 = zv + std::max(0, kernels::bit_length(new_max_v) - 30);
    kernels::AdamApply ka;
    ka.m_store = em2 - zm;
    ka.v_store = ev2 - zv;
    ka.sh = ((ev2 - 30) & 1) == 0 ? 30 : 31;
    const int half_p = (ev2 - ka.sh) / 2;  // √v = r·2^half_p
    ka.eps = std::llround(std::min(std::ldexp(eps_b, -half_p), std::ldexp(1.0, 40)));
    const quant::Dyadic f = quant::to_dyadic(std::ldexp(k_step, em2 - half_p - e), 24);
    ka.f_m = f.mantissa;
    ka.f_s = f.shift;
    ka.decay = p->decay && decay.mantissa != 0;
    ka.dl_m = decay.mantissa;
    ka.dl_s = decay.shift;

    // Pass 2: store m', v' and update the weights (new weights in int64 into mz, which pass 2 has read).
    auto stream = [&](uint32_t slot) {
      return quant::CounterRng(
          seed, quant::StreamKey{.purpose = quant::Purpose::kUpdate, .owner = p->id, .slot = slot, .step = step});
    };
    const quant::CounterRng rng_m = stream(0), rng_v = stream(1), rng_u = stream(2);
    for_ranges([&](std::size_t r, std::size_t begin, std::size_t end) {
      uint32_t dm[kBlock], dv[kBlock], du[kBlock];
      for (std::size_t i0 = begin; i0 < end; i0 += kBlock) {
        const std::size_t len = std::min(kBlock, end - i0);
        rng_m.fill_u32(i0, len, dm);
        rng_v.fill_u32(i0, len, dv);
        rng_u.fill_u32(i0, len, du);
        part_w[r] = std::max(part_w[r], kernels::adamw_apply(mz + i0, vz + i0, w + i0, dm, dv, du, len, ka, m + i0,
                                                             v + i0, mz + i0, w + i0));
      }
    });
    uint64_t wmax = 0;
    for (std::size_t r = 0; r < ranges; ++r) wmax = std::max(wmax, part_w[r]);
    m_t.set_exponent(em2);
    v_t.set_exponent(ev2);
    const int sw = std::max(0, kernels::bit_length(wmax) - 30);
    if (sw > 0) {
      for_ranges([&](std::size_t, std::size_t begin, std::size_t end) {
        kernels::sgd_narrow(mz + begin, end - begin, sw, w + begin);
      });
    }
    p->master.set_exponent(e + sw);
    p->has_grad = false;
  }
}

std::vector<NamedState> AdamW::state() const { return table_.state(); }

void AdamW::check_state(const NamedState& s, const Param& p) const {
  table_.check(s, p, kMaxStateOffset);
  if (s.slot == "v") {
    const int32_t* x = s.value.data<int32_t>();
    for (std::size_t i = 0; i < s.value.size(); ++i)
      if (x[i] < 0)
        throw std::invalid_argument(s.param + " v: element " + std::to_string(i) + " is " + std::to_string(x[i]) +
                                    " (a second moment is never negative)");
  }
}

void AdamW::load_state(std::vector<NamedState> state, const std::vector<Param*>& params) {
  table_.load(std::move(state), params, [this](const NamedState& s, const Param& p) { check_state(s, p); });
}

}  // namespace qtrain
