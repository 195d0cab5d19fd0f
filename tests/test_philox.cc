// The SIMD Philox kernel against its scalar definition, on every target.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "qtrain/kernels/philox.h"
#include "qtrain/quant/rng.h"
#include "tests/target_test_util.h"

namespace qtrain::kernels {
namespace {

class PhiloxTarget : public PerTargetTest {};

TEST_P(PhiloxTarget, BlocksMatchScalarDefinition) {
  const std::array<uint32_t, 2> key{0xdeadbeef, 0x01234567};
  // Block counts around every vector width; first blocks that straddle the 2^32 boundary of the low word.
  for (uint64_t first : {uint64_t{0}, uint64_t{5}, (uint64_t{1} << 32) - 3, uint64_t{0xfffffffffffffff0}})
    for (std::size_t blocks : {0, 1, 2, 3, 7, 8, 9, 16, 17, 63, 100}) {
      const uint64_t stream = 0x8000000000000123ull ^ blocks;
      std::vector<uint32_t> got(4 * blocks + 1, 0x5a5a5a5a), want(4 * blocks + 1, 0x5a5a5a5a);
      philox_blocks(first, blocks, stream, key, got.data());
      ref::philox_blocks(first, blocks, stream, key, want.data());
      ASSERT_EQ(got, want) << GetParam() << " first " << first << " blocks " << blocks;  // incl. no overrun
    }
}

TEST_P(PhiloxTarget, CounterRngFillMatchesSingleDraws) {
  const quant::CounterRng rng(7,
                              quant::StreamKey{.purpose = quant::Purpose::kRounding, .owner = 2, .slot = 3, .step = 3});
  for (uint64_t first : {0, 1, 2, 3, 4, 1001})
    for (std::size_t n : {0, 1, 3, 4, 5, 31, 32, 33, 257}) {
      std::vector<uint32_t> out(n);
      rng.fill_u32(first, n, out.data());
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], rng.u32(first + i)) << first << " " << n << " " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Targets, PhiloxTarget, ::testing::ValuesIn(target_names()),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace qtrain::kernels
