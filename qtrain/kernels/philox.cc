// Philox4x32-10 over many blocks (see philox.h), one Highway source compiled for every target.
//
// Structure of arrays: lane i of four u64 vectors holds the counter words of block first + i (each word in the
// low 32 bits of its 64-bit lane). MulEven multiplies the low 32 bits of each 64-bit lane into a full 64-bit
// product, which is exactly Philox's mulhilo: hi = product >> 32, lo = product & 0xffffffff. Ten rounds, then the
// four words of each block are interleaved into the output.

#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/philox.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/philox.h"

#ifndef QTRAIN_KERNELS_PHILOX_SHARED_
#define QTRAIN_KERNELS_PHILOX_SHARED_
namespace qtrain::kernels::philox_detail {
inline constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
inline constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
inline constexpr int kRounds = 10;
}  // namespace qtrain::kernels::philox_detail
#endif

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace philox_detail;

#if HWY_TARGET != HWY_SCALAR
// U independent groups of Lanes(d64) blocks per iteration: a round is a chain MulEven → shift → xor, so one
// group is latency-bound; U groups in flight fill the pipeline. The high halves of c1 and c3 are left unmasked
// between rounds (only the low 32 bits of each lane feed MulEven and the xors' low halves) and cleaned at the
// end.
template <std::size_t U>
HWY_INLINE void PhiloxGroup(uint64_t base, uint64_t stream, const uint32_t* HWY_RESTRICT keys0,
                            const uint32_t* HWY_RESTRICT keys1, uint32_t* HWY_RESTRICT out) {
  const hn::ScalableTag<uint64_t> d64;
  const hn::Repartition<uint32_t, decltype(d64)> d32;
  const std::size_t lanes = hn::Lanes(d64);
  const auto low32 = hn::Set(d64, 0xffffffffull);
  const auto m0 = hn::BitCast(d32, hn::Set(d64, kMul0));
  const auto m1 = hn::BitCast(d32, hn::Set(d64, kMul1));
  using V = hn::Vec<decltype(d64)>;
  V c0[U], c1[U], c2[U], c3[U];
  for (std::size_t u = 0; u < U; ++u) {
    // Counter words of each lane's block: low and high halves of the 64-bit block index, then the stream.
    const auto idx = hn::Add(hn::Set(d64, base + u * lanes), hn::Iota(d64, 0));
    c0[u] = idx;  // low half used; high half ignored until the end
    c1[u] = hn::ShiftRight<32>(idx);
    c2[u] = hn::Set(d64, stream & 0xffffffffull);
    c3[u] = hn::Set(d64, stream >> 32);
  }
  for (int r = 0; r < kRounds; ++r) {
    const auto k0 = hn::Set(d64, keys0[r]), k1 = hn::Set(d64, keys1[r]);
    for (std::size_t u = 0; u < U; ++u) {
      const auto p0 = hn::MulEven(hn::BitCast(d32, c0[u]), m0);  // kMul0 · c0, 64-bit
      const auto p1 = hn::MulEven(hn::BitCast(d32, c2[u]), m1);  // kMul1 · c2
      c0[u] = hn::Xor(hn::Xor(hn::ShiftRight<32>(p1), c1[u]), k0);
      c2[u] = hn::Xor(hn::Xor(hn::ShiftRight<32>(p0), c3[u]), k1);
      c1[u] = p1;  // low half = lo(kMul1 · c2)
      c3[u] = p0;
    }
  }
  for (std::size_t u = 0; u < U; ++u) {
    // Words (c0, c1) and (c2, c3) of each block packed into one u64 each (little-endian: c0 first), then the two
    // interleaved: block i's four words land at out[4i .. 4i + 3].
    const auto lo = hn::Or(hn::And(c0[u], low32), hn::ShiftLeft<32>(c1[u]));
    const auto hi = hn::Or(hn::And(c2[u], low32), hn::ShiftLeft<32>(c3[u]));
    hn::StoreInterleaved2(lo, hi, d64, reinterpret_cast<uint64_t*>(out + 4 * u * lanes));
  }
}
#endif

void PhiloxBlocks(uint64_t first, std::size_t blocks, uint64_t stream, uint32_t key0, uint32_t key1,
                  uint32_t* HWY_RESTRICT out) {
#if HWY_TARGET == HWY_SCALAR
  // One lane: no u32 view of a u64 vector (and nothing to gain); the reference is the scalar kernel.
  ref::philox_blocks(first, blocks, stream, {key0, key1}, out);
#else
  const hn::ScalableTag<uint64_t> d64;
  const std::size_t lanes = hn::Lanes(d64);
  uint32_t keys0[kRounds], keys1[kRounds];  // the key schedule (Weyl sequence)
  for (int r = 0; r < kRounds; ++r) {
    keys0[r] = key0 + static_cast<uint32_t>(r) * kWeyl0;
    keys1[r] = key1 + static_cast<uint32_t>(r) * kWeyl1;
  }
  std::size_t b = 0;
  for (; b + 4 * lanes <= blocks; b += 4 * lanes) PhiloxGroup<4>(first + b, stream, keys0, keys1, out + 4 * b);
  for (; b + lanes <= blocks; b += lanes) PhiloxGroup<1>(first + b, stream, keys0, keys1, out + 4 * b);
  if (b < blocks) ref::philox_blocks(first + b, blocks - b, stream, {key0, key1}, out + 4 * b);
#endif
}

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qtrain::kernels {

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  using namespace philox_detail;
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
}

namespace ref {
void philox_blocks(uint64_t first, std::size_t blocks, uint64_t stream, std::array<uint32_t, 2> key, uint32_t* out) {
  for (std::size_t b = 0; b < blocks; ++b) {
    const uint64_t i = first + b;
    const auto r = philox4x32_10({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                  static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)},
                                 key);
    for (int j = 0; j < 4; ++j) out[4 * b + j] = r[j];
  }
}
}  // namespace ref

HWY_EXPORT(PhiloxBlocks);

void philox_blocks(uint64_t first, std::size_t blocks, uint64_t stream, std::array<uint32_t, 2> key, uint32_t* out) {
  HWY_DYNAMIC_DISPATCH(PhiloxBlocks)(first, blocks, stream, key[0], key[1], out);
}

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
