// int4 operands: values in [−8, 7] stored two per byte, half the memory traffic of int8.
//
// Layout of an int4 matrix (rows × cols): row-major, each row starting on a byte boundary and taking
// int4_row_bytes(cols) = ⌈cols/2⌉ bytes. Element c of a row is in byte c/2: the low nibble for even c, the high
// nibble for odd c, as two's complement (0x8 = −8, 0xF = −1). When cols is odd the last high nibble is 0.
//
// The GEMMs below take int4 operands in that layout and compute exactly what the int8 GEMMs of gemm.h compute on
// the unpacked values (same layouts, same results, same accumulator bound). The nibbles are unpacked by the
// routine that packs the operand for the micro-kernels, so the inner loops are the int8 ones.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtrain/kernels/gemm.h"

namespace qtrain::kernels {

inline constexpr std::size_t int4_row_bytes(std::size_t cols) { return (cols + 1) / 2; }

// src (rows × cols int8, every value in [−8, 7]; values outside keep only their low 4 bits) → dst
// (rows · int4_row_bytes(cols) bytes).
void pack_int4(const int8_t* src, std::size_t rows, std::size_t cols, uint8_t* dst);
// dst (rows × cols int8) ← src (int4 layout above).
void unpack_int4(const uint8_t* src, std::size_t rows, std::size_t cols, int8_t* dst);

// Every operand int4 (the layouts of gemm.h; the forward takes gemm.h's epilogue too).
void gemm_forward_s4(const uint8_t* x, const uint8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                     ThreadPool* pool, const GemmEpilogue& epilogue = {});
void gemm_dgrad_s4(const uint8_t* dy, const uint8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                   ThreadPool* pool);
void gemm_wgrad_s4(const uint8_t* dy, const uint8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                   ThreadPool* pool);

// int4 weights W[m×k] packed once (see PackedWeights in gemm.h): use them with int8 activations
// (gemm_forward_packed / gemm_dgrad_packed) or int4 activations (below).
PackedWeights pack_weights_forward_s4(const uint8_t* w, std::size_t m, std::size_t k, ThreadPool* pool);
PackedWeights pack_weights_dgrad_s4(const uint8_t* w, std::size_t m, std::size_t k, ThreadPool* pool);
void gemm_forward_packed_s4(const uint8_t* x, const PackedWeights& w, int32_t* y, std::size_t n, ThreadPool* pool,
                            const GemmEpilogue& epilogue = {});
void gemm_dgrad_packed_s4(const uint8_t* dy, const PackedWeights& w, int32_t* dx, std::size_t n, ThreadPool* pool);

// Scalar references: element by element, straight from the layout description.
namespace ref {
void pack_int4(const int8_t* src, std::size_t rows, std::size_t cols, uint8_t* dst);
void unpack_int4(const uint8_t* src, std::size_t rows, std::size_t cols, int8_t* dst);
}  // namespace ref

}  // namespace qtrain::kernels
