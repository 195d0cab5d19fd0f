// ShiftQuant: gradient quantization with power-of-two channel groups and no memory rearrangement.
//
// A gradient G (rows × channels, int32 with one exponent e_g) has channels whose ranges differ by orders of
// magnitude; one scale for the tensor wastes most of the b bits on the small channels. ShiftQuant gives channel c
// the scale 2^(e0 − k_c):
//   Q    = 2^(b−1) − 1
//   e0   = finest exponent with R_max ≤ Q·2^e0             (R_max = max_c R_c, R_c = max_n |G[n,c]|)
//   k_c  = min(N_G − 1, largest k with R_c ≤ Q·2^(e0−k))  (how many octaves below the top group; N_G − 1 if R_c = 0)
//   q[n,c] = SR(G[n,c]·2^e_g / 2^(e0 − k_c)),  |q| ≤ Q    (stochastic rounding: E[q·2^(e0−k_c)] = G·2^e_g)
// (The reconstruction in the notes uses k_c = floor(log2(R_max/R_c)); ours is never smaller, so a channel keeps at
// least as many bits — it is the per-channel power-of-two scale, limited to N_G octaves.)
//
// dgrad (reduction over channels): dX = Σ_c Ĝ[n,c]·W[c,:] = 2^(e0 − (N_G−1)) · Σ_c (q[n,c] << (N_G−1−k_c))·W[c,:].
//   The shifted operand is one int8 matrix as long as Q·2^(N_G−1) ≤ 127, so one plain int8 GEMM computes the
//   grouped product exactly: no permutation, no per-group GEMMs.
// wgrad (channels not reduced): dW[c,:] = 2^(e0 − k_c) · Σ_n q[n,c]·X[n,:]: the unshifted q is the operand and
//   the group shift becomes a per-row exponent of the int32 output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "qtrain/quant/rng.h"
#include "qtrain/quant/uninit_vector.h"

namespace qtrain::kernels {
class ThreadPool;
}  // namespace qtrain::kernels

namespace qtrain::quant {

struct ShiftQuantConfig {
  int bits = 8;    // b, 2..8
  int groups = 1;  // N_G ≥ 1 with (2^(b−1) − 1)·2^(N_G−1) ≤ 127
};
// Largest N_G for b-bit gradients in int8 carriers (b=4 → 5, b=6 → 3, b=8 → 1).
int max_groups(int bits);
// Throws UsageError naming the valid range when bits or groups are out of range.
void validate(const ShiftQuantConfig& cfg);

struct ShiftQuantized {
  std::size_t rows = 0, cols = 0;
  int groups = 1;
  int e0 = 0;                   // exponent of group 0 (the largest channels)
  UninitVector<int8_t> q;        // rows × cols, value q·2^(e0 − k_c): the wgrad operand
  UninitVector<int8_t> shifted;  // rows × cols, q << (N_G−1−k_c), value ·2^(e0 − (N_G−1)): the dgrad operand
  std::vector<uint8_t> k;       // per channel group id k_c in 0..N_G−1
  int shifted_exponent() const { return e0 - (groups - 1); }
  int channel_exponent(std::size_t c) const { return e0 - k[c]; }
};

// Quantize G (rows × cols int32, exponent e_g). Stochastic rounding draws rng.u32(n·cols + c). With a pool, both
// passes (channel ranges, rounding) are split by rows when the pool says it pays; the result is the same bits.
void shiftquant(const int32_t* g, std::size_t rows, std::size_t cols, int e_g, const ShiftQuantConfig& cfg,
                const CounterRng& rng, ShiftQuantized* out, kernels::ThreadPool* pool = nullptr);

// The same shift-on-pack trick for an operand with per-row exponents that is reduced over its rows (a weight
// matrix with per-output-channel scales in the dgrad GEMM): rows are brought to one exponent
// E = max_r e_row[r] − int8_headroom(limit). Rows with e_row[r] ≥ E are shifted left exactly (|w| ≤ limit keeps
// them inside int8); rows more than int8_headroom(limit) octaves below the largest are rounded to nearest even.
// Returns E; out may not alias w.
int align_rows(const int8_t* w, std::size_t rows, std::size_t cols, const int* e_row, uint32_t limit, int8_t* out);

}  // namespace qtrain::quant
