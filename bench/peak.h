// The machine's int8 limit: the best int8 dot-product instruction of the active kernel target, run in a
// register-only loop (no loads, independent accumulators), so every GEMM result can print its share of it.
//
//   AVX3_DL       vpdpbusd zmm          64 u8·s8 products per instruction
//   AVX3          vpmaddwd + vpaddd zmm 32 s16·s16 products per pair
//   AVX2          vpmaddwd + vpaddd ymm 16
//   SSE4, SSSE3   pmaddwd + paddd xmm    8
// Operations are counted as in the GEMM benchmarks: 2 per product (a multiply and an add). The SCALAR and
// EMU128 targets have no such instruction: peak_supported() is false there.
#pragma once

#include <cstdint>
#include <string>

namespace qtrain::bench {

// Whether the active target has a peak loop.
bool peak_supported();
// The instruction(s) the active target's loop runs, e.g. "vpdpbusd zmm".
std::string peak_instruction();
// Runs the loop `iterations` times; returns the number of operations done (2 per product).
uint64_t peak_loop(uint64_t iterations);
// Operations per second of the loop on this thread: the best of `repeats` timed runs of about 50 ms each.
double measure_peak_ops_per_second(int repeats = 7);

}  // namespace qtrain::bench
