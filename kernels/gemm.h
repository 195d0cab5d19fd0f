// int8 × int8 → int32 GEMMs in the three layouts a training step needs.
//
// All matrices are dense row-major with rows contiguous (leading dimension = row length).
//   forward  Y[N×M]  = X[N×K]  · W[M×K]ᵀ     (reduction over K)
//   dgrad    dX[N×K] = dY[N×M] · W[M×K]      (reduction over M)
//   wgrad    dW[M×K] = dY[N×M]ᵀ · X[N×K]     (reduction over N)
//
// Accumulator bound: every output is a sum of `R` products of int8 values, |a·b| ≤ 128·128 = 2^14, so the
// int32 accumulator cannot overflow while R ≤ kMaxReduction (R · 2^14 ≤ 2^31 − 1 is not guaranteed at R = 2^17).
// Callers (the engine's operators) check R against kMaxReduction; the kernels themselves do no validation.
//
// Each function picks the best Highway target compiled in (see dispatch.h) and splits output rows over the
// pool's threads. The result is bit-identical for every thread count and every target: integer sums are exact.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

class ThreadPool;

// Largest reduction length for which an int32 accumulator of int8·int8 products provably cannot overflow:
// 131071 · 128 · 128 = 2^31 − 2^14 < 2^31.
inline constexpr std::size_t kMaxReduction = 131071;

// Y = X · Wᵀ. `pool` may be null (single thread).
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                  ThreadPool* pool);
// dX = dY · W.
void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool);
// dW = dYᵀ · X.
void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool);

// Plain scalar references (no SIMD, no threads): what the tests compare the kernels against.
namespace ref {
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k);
void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k);
void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k);
}  // namespace ref

}  // namespace qtrain::kernels
