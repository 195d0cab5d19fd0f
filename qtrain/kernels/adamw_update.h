// The element passes of the integer AdamW update (qtrain/engine/optim/adamw.h), over plain arrays. Scalar code:
// the moments need 93-bit products (int128) and the update one exact division and one integer square root per
// element, which SIMD units do not have; the optimizer splits the passes over the pool instead.
//
// Notation (rounding.h): R_even(x, s) = x / 2^s to nearest, ties to even (s ≤ 0: an exact left shift);
// R_stoch(x, s, r) = floor((x + r·2^(s−32)) / 2^s), the draw r as the top 32 fraction bits.
//
// Pass 1, the new moments, exact up to one nearest-even rounding at a working exponent Z (the caller picks Z so
// that every |term| and sum < 2^62; terms more than 62 octaves below the largest are rounded there):
//   β = a/2^s, 1 − β = c/2^s with a + c = 2^s exactly (s ≤ 31)
//   M[j] = T(a1·m[j], m_shift) + T(c1·g[j], gm_shift)          gm_shift = e_g − s1 − Z_m, m_shift = e_m − s1 − Z_m
//   V[j] = T(a2·v[j], v_shift) + T(c2·g[j]², gv_shift)        gv_shift = 2·e_g − s2 − Z_v, v_shift = e_v − s2 − Z_v
//   T(x, k) = x·2^k (k ≥ 0, exact) or R_even(x, −k), in int128 (|c2·g²| < 2^93).
// Pass 2, storage and update, per element:
//   m' = R_stoch(M, m_store, dm)    v' = R_stoch(V, v_store, dv)          (the new state, |m'|, v' ≤ 2^30)
//   r  = ⌊√(max(v', 1)·2^sh)⌋ exact (sh ∈ {30, 31}: r ∈ [2^15, 2^31)),  D = r + eps   (ε in units of r, ≤ 2^40)
//   N  = |m'|·f_m (< 2^56), lz = 52 − bit_length(N), q = ⌊⌊N·2^lz⌋ / D⌋ exactly (an IEEE double division with an
//        integer fix-up; ≥ 20 significant bits while D < 2^32, i.e. unless ε dominates √v)
//   X  = q·2^(t − lz) (t = 32 − f_s; R_even when t < lz), clamped to 2^94: |m'|·F/D in units of 2^−32 of a
//        master step, F = f_m·2^−f_s
//   T  = sign(m')·X + [decay] T(w·dl_m, 32 − dl_s)       (η·λ·w, the decoupled decay, dl = dl_m·2^−dl_s)
//   u  = clamp(R_stoch(T, 32, du), ±2^62),  w' = clamp(w − u, ±2^62)
// The draws dm, dv, du are one uint32 per element each (the caller's, keyed by element index).
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

struct AdamMoments {
  int64_t a1 = 0, c1 = 0;  // β1 = a1/2^s1
  int s1 = 0;
  int64_t a2 = 0, c2 = 0;  // β2 = a2/2^s2
  int s2 = 0;
  int m_shift = 0, v_shift = 0;  // e_m − s1 − Z_m, e_v − s2 − Z_v
};

// Pass 1 over n elements sharing one gradient exponent (gm_shift, gv_shift as above): writes M and V at Z_m and
// Z_v into mz, vz; raises *max_m to max |M| and *max_v to max V.
void adamw_moments(const int32_t* m, const int32_t* v, const int32_t* g, std::size_t n, const AdamMoments& k,
                   int gm_shift, int gv_shift, int64_t* mz, int64_t* vz, uint64_t* max_m, uint64_t* max_v);

struct AdamApply {
  int m_store = 0, v_store = 0;  // e_m' − Z_m ≥ 0, e_v' − Z_v ≥ 0
  int sh = 30;                   // 30 or 31: e_v' − sh even
  int64_t eps = 0;               // ε·√bc2 in units of r, 0..2^40
  int64_t f_m = 0;               // F = f_m·2^−f_s, 0 ≤ f_m < 2^25
  int f_s = 0;
  bool decay = false;
  int64_t dl_m = 0;  // η·λ = dl_m·2^−dl_s, 0 ≤ dl_m < 2^25
  int dl_s = 0;
};

// Pass 2 over n elements: stores m', v' (int32) and the new master weights w' at the master exponent into w_wide
// (int64, may alias mz) and, truncated, into w_out (final unless the returned max |w'| needs more than 30 bits:
// then the caller narrows w_wide). Returns max |w'|.
uint64_t adamw_apply(const int64_t* mz, const int64_t* vz, const int32_t* w, const uint32_t* dm, const uint32_t* dv,
                     const uint32_t* du, std::size_t n, const AdamApply& k, int32_t* m_out, int32_t* v_out,
                     int64_t* w_wide, int32_t* w_out);

// ⌊√x⌋ exactly, for x < 2^62.
uint64_t isqrt(uint64_t x);

}  // namespace qtrain::kernels
