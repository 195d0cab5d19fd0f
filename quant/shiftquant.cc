#include "quant/shiftquant.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "quant/error.h"
#include "quant/pow2.h"

namespace qtrain::quant {

int max_groups(int bits) {
  const uint32_t q = static_cast<uint32_t>(signed_range(bits).hi);
  return int8_headroom(q) + 1;
}

void validate(const ShiftQuantConfig& cfg) {
  if (cfg.bits < 2 || cfg.bits > 8)
    throw UsageError("gradient bit-width " + std::to_string(cfg.bits) + " is out of range 2..8");
  const int g = max_groups(cfg.bits);
  if (cfg.groups < 1 || cfg.groups > g)
    throw UsageError("ShiftQuant groups N_G=" + std::to_string(cfg.groups) + " is out of range 1.." +
                     std::to_string(g) + " for " + std::to_string(cfg.bits) +
                     "-bit gradients ((2^(b-1)-1)*2^(N_G-1) must be <= 127 to fit the int8 carrier)");
}

void shiftquant(const int32_t* g, std::size_t rows, std::size_t cols, int e_g, const ShiftQuantConfig& cfg,
                const CounterRng& rng, ShiftQuantized* out) {
  validate(cfg);
  const uint32_t limit = static_cast<uint32_t>(signed_range(cfg.bits).hi);
  const int ng = cfg.groups;
  out->rows = rows;
  out->cols = cols;
  out->groups = ng;
  out->q.resize(rows * cols);
  out->shifted.resize(rows * cols);
  out->k.assign(cols, static_cast<uint8_t>(ng - 1));

  // Pass 1: channel ranges R_c.
  std::vector<uint64_t> range(cols, 0);
  for (std::size_t n = 0; n < rows; ++n) {
    const int32_t* row = g + n * cols;
    for (std::size_t c = 0; c < cols; ++c)
      range[c] = std::max(range[c], static_cast<uint64_t>(std::llabs(static_cast<int64_t>(row[c]))));
  }
  const uint64_t rmax = rows * cols == 0 ? 0 : *std::max_element(range.begin(), range.end());
  if (rmax == 0) {
    out->e0 = e_g;
    std::fill(out->q.begin(), out->q.end(), int8_t{0});
    std::fill(out->shifted.begin(), out->shifted.end(), int8_t{0});
    return;
  }
  const int s0 = covering_shift(rmax, limit);
  out->e0 = e_g + s0;
  // Group ids: the channel's own covering shift, at most N_G − 1 octaves finer than the tensor's.
  std::vector<int> shift(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    const int own = range[c] == 0 ? s0 - (ng - 1) : covering_shift(range[c], limit);
    const int kc = std::clamp(s0 - own, 0, ng - 1);
    out->k[c] = static_cast<uint8_t>(kc);
    shift[c] = s0 - kc;
  }
  // Pass 2: stochastic rounding to each channel's scale; the dgrad view is the same value shifted into place.
  // Draws are made in blocks over the whole tensor (element index n·cols + c), whatever the row length.
  constexpr std::size_t kBlock = 4096;
  std::vector<uint32_t> draws(std::min(kBlock, rows * cols));
  const std::size_t total = rows * cols;
  for (std::size_t i0 = 0; i0 < total; i0 += kBlock) {
    const std::size_t len = std::min(kBlock, total - i0);
    rng.fill_u32(i0, len, draws.data());
    std::size_t c = i0 % cols;
    for (std::size_t j = 0; j < len; ++j) {
      const std::size_t i = i0 + j;
      const int64_t v = shift_round_stochastic(g[i], shift[c], draws[j]);
      const int8_t qv = static_cast<int8_t>(std::clamp<int64_t>(v, -static_cast<int64_t>(limit), limit));
      out->q[i] = qv;
      out->shifted[i] = static_cast<int8_t>(qv * (1 << (ng - 1 - out->k[c])));
      if (++c == cols) c = 0;
    }
  }
}

int align_rows(const int8_t* w, std::size_t rows, std::size_t cols, const int* e_row, uint32_t limit, int8_t* out) {
  if (rows == 0) return 0;
  const int emax = *std::max_element(e_row, e_row + rows);
  const int e = emax - int8_headroom(limit);
  for (std::size_t r = 0; r < rows; ++r) {
    const int s = e - e_row[r];  // ≤ 0: exact left shift; > 0: rounded right shift
    for (std::size_t c = 0; c < cols; ++c)
      out[r * cols + c] = static_cast<int8_t>(std::clamp<int64_t>(shift_round_even(w[r * cols + c], s), -127, 127));
  }
  return e;
}

}  // namespace qtrain::quant
