#include "qtrain/engine/ops/softmax.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/ops/softmax_rows.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

void SoftmaxConfig::validate() const {
  if (!(scale >= std::ldexp(1.0, -20) && scale <= 256.0))
    throw UsageError("softmax scale " + std::to_string(scale) + " is out of range 2^-20..256");
}

namespace {

constexpr int kPFrac = 15;
constexpr int64_t kZClamp = int64_t{1} << 46;  // ±2^30 real units in Q16 (e^−2^30 is 0 anyway)

// The columns row r sees.
std::size_t visible(const SoftmaxConfig& cfg, std::size_t r, std::size_t cols) {
  return cfg.causal ? r % cfg.rows_per_matrix + 1 : cols;
}

// Q15 probabilities of one row of `n` visible columns from its exponentials (sum s > 0): floors, then the missing
// units to the largest remainders (ties: lower column).
void round_row(const int64_t* e, std::size_t n, int64_t s, int32_t* p, std::vector<int64_t>& rem,
               std::vector<uint32_t>& order) {
  int64_t total = 0;
  rem.resize(n);
  // ⌊num / s⌋ by one reciprocal per row: num < 2^46 and s < 2^53 are exact doubles and num·(1/s) is within a few
  // ulps of the quotient (≤ 2^15), so its truncation is the floor or one off either way; the integer remainder
  // tells which (q·s < 2^46 + 2^53). Bit for bit the integer division, without one per element.
  const double inv = 1.0 / static_cast<double>(s);
  for (std::size_t c = 0; c < n; ++c) {
    const int64_t num = e[c] << kPFrac;  // e ≤ 2^30: < 2^45
    auto q = static_cast<int64_t>(static_cast<double>(num) * inv);
    int64_t r = num - q * s;
    if (r < 0) {
      --q;
      r += s;
    } else if (r >= s) {
      ++q;
      r -= s;
    }
    p[c] = static_cast<int32_t>(q);
    rem[c] = r;
    total += q;
  }
  const int64_t missing = (int64_t{1} << kPFrac) - total;  // 0 ≤ missing < n
  if (missing == 0) return;
  order.resize(n);
  std::iota(order.begin(), order.end(), 0u);
  std::partial_sort(order.begin(), order.begin() + missing, order.end(),
                    [&](uint32_t a, uint32_t b) { return rem[a] != rem[b] ? rem[a] > rem[b] : a < b; });
  for (int64_t i = 0; i < missing; ++i) ++p[order[static_cast<std::size_t>(i)]];
}

}  // namespace

VarPtr softmax(const StepContext& ctx, const SoftmaxConfig& cfg_in, const VarPtr& x) {
  cfg_in.validate();
  const Tensor& xv = x->value;
  const std::size_t rows = xv.rows(), cols = xv.cols();
  SoftmaxConfig cfg = cfg_in;
  if (cfg.rows_per_matrix == 0) cfg.rows_per_matrix = cols;
  if (cols == 0) throw std::invalid_argument("softmax: rows of no columns");
  if (cfg.causal && (cfg.rows_per_matrix != cols || rows % cols != 0))
    throw std::invalid_argument("softmax: a causal mask needs whole square matrices; got " + xv.describe() +
                                " in matrices of " + std::to_string(cfg.rows_per_matrix) + " rows");
  const quant::Dyadic c = quant::to_dyadic(cfg.scale);  // m in [2^15, 2^16]
  auto out = std::make_shared<Var>();
  out->value = Tensor(rows, cols, DType::kI32, -kPFrac);  // masked entries stay 0
  int32_t* p = out->value.data<int32_t>();
  const kernels::PassSplit split(ctx.pool, rows);
  split.run(kernels::kNsPerByte * static_cast<double>(rows * cols * 16),
            [&](std::size_t, std::size_t r0, std::size_t r1) {
              std::vector<int64_t> z(cols), e(cols), rem;
              std::vector<uint32_t> order;
              for (std::size_t r = r0; r < r1; ++r) {
                softmax_rows::row_q16(xv, r, z.data());
                const std::size_t n = visible(cfg, r, cols);
                for (std::size_t j = 0; j < n; ++j)  // |z| ≤ 2^46, m < 2^16: < 2^62
                  z[j] = quant::shift_round_even(std::clamp(z[j], -kZClamp, kZClamp) * c.mantissa, c.shift);
                const int64_t s = softmax_rows::row_exp(z.data(), n, e.data());
                round_row(e.data(), n, s, p + r * cols, rem, order);
              }
            });
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out, cfg, c, rows, cols, pool = ctx.pool] {
    if (!out->has_grad) return;
    const Tensor g = take_grad(*out);
    if (g.axis() != ScaleAxis::kTensor) throw std::logic_error("softmax: gradient with several exponents");
    const int32_t* gv = g.data<int32_t>();
    uint64_t gmax = 0;
    for (std::size_t i = 0; i < g.size(); ++i)
      gmax = std::max<uint64_t>(gmax, static_cast<uint64_t>(std::abs(int64_t{gv[i]})));
    int k = 0;
    while ((gmax >> k) > (uint64_t{1} << 15) - 1) ++k;  // then |R(g, k)| ≤ 2^15
    const int32_t* pv = out->value.data<int32_t>();
    std::vector<int64_t> d(rows * cols, 0);
    const kernels::PassSplit bsplit(pool, rows);
    bsplit.run(kernels::kNsPerByte * static_cast<double>(rows * cols * 16),
               [&](std::size_t, std::size_t r0, std::size_t r1) {
                 std::vector<int64_t> u(cols);
                 for (std::size_t r = r0; r < r1; ++r) {
                   const std::size_t n = visible(cfg, r, cols);
                   const int32_t* pr = pv + r * cols;
                   int64_t t = 0;  // Σ P·u: |t| ≤ 2^15·2^15
                   for (std::size_t j = 0; j < n; ++j) {
                     u[j] = quant::shift_round_even(gv[r * cols + j], k);
                     t += pr[j] * u[j];
                   }
                   for (std::size_t j = 0; j < n; ++j)  // P ≤ 2^15, |(u << 15) − t| ≤ 2^31, m < 2^16: < 2^62
                     d[r * cols + j] = pr[j] * ((u[j] << kPFrac) - t) * c.mantissa;
                 }
               });
    accumulate_grad(*x, narrow_tensor(d.data(), rows, cols, g.exponent() + k - 2 * kPFrac - c.shift), pool);
  });
  return out;
}

}  // namespace qtrain
