#include "qtrain/quant/shiftquant.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

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
                const CounterRng& rng, ShiftQuantized* out, kernels::ThreadPool* pool) {
  validate(cfg);
  const uint32_t limit = static_cast<uint32_t>(signed_range(cfg.bits).hi);
  const int ng = cfg.groups;
  out->rows = rows;
  out->cols = cols;
  out->groups = ng;
  out->q.resize(rows * cols);
  out->shifted.resize(rows * cols);
  out->k.assign(cols, static_cast<uint8_t>(ng - 1));

  // Pass 1: channel ranges R_c, the largest of the row tiles' column maxima.
  std::vector<uint64_t> range(cols, 0);
  const double elements = static_cast<double>(rows * cols);
  const kernels::PassSplit split(pool, rows);
  kernels::TilePartials<uint64_t> part(range.data(), split, cols);
  split.run(kernels::kNsPerByte * elements * sizeof(int32_t), [&](std::size_t t, std::size_t r0, std::size_t r1) {
    kernels::col_max_abs_i32(g + r0 * cols, r1 - r0, cols, /*positive_only=*/false, part.at(t));
  });
  part.merge([](uint64_t& a, uint64_t b) { a = std::max(a, b); });
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
  std::vector<int> shift(cols), up(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    const int own = range[c] == 0 ? s0 - (ng - 1) : covering_shift(range[c], limit);
    const int kc = std::clamp(s0 - own, 0, ng - 1);
    out->k[c] = static_cast<uint8_t>(kc);
    shift[c] = s0 - kc;
    up[c] = ng - 1 - kc;
  }
  // Pass 2: stochastic rounding to each channel's scale; the dgrad view is the same value shifted into place:
  //   q = clamp(shift_round_stochastic(g, shift[c], draw), ±limit),  shifted = q·2^(N_G−1−k_c)
  // (kernels::shiftquant_round). The draw of element i = n·cols + c is rng.u32(i) whatever the blocking or the
  // thread (a counter-based stream); blocks are whole rows of about 4096 draws, which stay in L1, inside row tiles.
  // Work: 14 bytes an element (g read, the draw written and read, q and shifted written); Philox's arithmetic is
  // about as much again, which kernels::kNsPerByte's ~10 GB/s leaves room for.
  const std::size_t block_rows = std::max<std::size_t>(1, 4096 / std::max<std::size_t>(cols, 1));
  kernels::for_tiles(pool, rows, kernels::kNsPerByte * elements * 14, [&](std::size_t t0, std::size_t t1) {
    std::vector<uint32_t> draws(std::min(block_rows, t1 - t0) * cols);
    for (std::size_t r0 = t0; r0 < t1; r0 += block_rows) {
      const std::size_t r1 = std::min(t1, r0 + block_rows), i0 = r0 * cols, len = (r1 - r0) * cols;
      rng.fill_u32(i0, len, draws.data());
      kernels::shiftquant_round(g + i0, draws.data(), r1 - r0, cols, shift.data(), up.data(),
                                static_cast<int32_t>(limit), out->q.data() + i0, out->shifted.data() + i0);
    }
  });
}

int align_rows(const int8_t* w, std::size_t rows, std::size_t cols, const int* e_row, uint32_t limit, int8_t* out) {
  if (rows == 0) return 0;
  const int emax = *std::max_element(e_row, e_row + rows);
  const int e = emax - int8_headroom(limit);
  for (std::size_t r = 0; r < rows; ++r) {
    const int s = e - e_row[r];  // ≤ 0: exact left shift; > 0: rounded right shift
    kernels::requantize_i8(w + r * cols, cols, s, -127, 127, out + r * cols);
  }
  return e;
}

}  // namespace qtrain::quant
