// Philox4x32-10 (Salmon et al., SC'11), the counter-based generator behind every random draw of a training step
// (qtrain/quant/rng.h gives it its meaning). Many consecutive blocks at once, with SIMD on every Highway target.
//
// Block b uses the 128-bit counter (b mod 2^32, b >> 32, stream mod 2^32, stream >> 32) and the 64-bit key; it
// yields four 32-bit words, written to out[4·(b − first) … 4·(b − first) + 3].
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

// The four words of one block (scalar; the definition of the generator).
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Blocks [first, first + blocks) of one stream: 4·blocks words. Bit-identical to philox4x32_10 on every target.
void philox_blocks(uint64_t first, std::size_t blocks, uint64_t stream, std::array<uint32_t, 2> key, uint32_t* out);

namespace ref {
void philox_blocks(uint64_t first, std::size_t blocks, uint64_t stream, std::array<uint32_t, 2> key, uint32_t* out);
}  // namespace ref

}  // namespace qtrain::kernels
