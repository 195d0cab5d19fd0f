// Typed random-stream keys (quant/rng.h): the layout pinned against the Philox counter, pass 0 equal to the
// streams of earlier releases, passes drawing independently, and every field's range checked.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "op_test_util.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/rng.h"

namespace qtrain {
namespace {

using quant::CounterRng;
using quant::Purpose;
using quant::StreamKey;

// The draw at element `index` of counter stream `stream`, from the generator's definition (rng.h's layout).
uint32_t philox_draw(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint64_t block = index >> 2;
  const auto r = quant::philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                    static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)},
                                   {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return r[index & 3];
}

// The streams of earlier releases, packed by hand here (and only here) to pin the layout:
// (purpose << 60) ^ (step << 20) ^ tensor, with tensor = layer·4 + slot for a layer's rounding and
// 2^19 | param·4 + slot for the optimizer's.
uint64_t legacy(uint64_t purpose, uint64_t step, uint64_t tensor) { return (purpose << 60) ^ (step << 20) ^ tensor; }

TEST(StreamKey, PassZeroDrawsTheStreamsOfEarlierReleases) {
  const struct {
    StreamKey key;
    uint64_t stream;
  } cases[] = {
      {{.purpose = Purpose::kRounding, .owner = 3, .slot = 1, .step = 7}, legacy(1, 7, 13)},
      {{.purpose = Purpose::kRounding, .owner = (1u << 17) - 1, .slot = 3, .step = (uint64_t{1} << 40) - 1},
       legacy(1, (uint64_t{1} << 40) - 1, (1u << 19) - 1)},
      {{.purpose = Purpose::kUpdate, .owner = 9, .slot = 2, .step = 123}, legacy(1, 123, 0x80000u | (9u << 2) | 2)},
      {{.purpose = Purpose::kUpdate, .owner = (1u << 15) - 1, .slot = 0, .step = 5},
       legacy(1, 5, 0x80000u | (((1u << 15) - 1) << 2))},
      {{.purpose = Purpose::kInit, .owner = 41}, legacy(3, 0, 41)},
      {{.purpose = Purpose::kShuffle, .step = 12}, legacy(2, 12, 0)},
      {{.purpose = Purpose::kAugment, .step = 4}, legacy(4, 4, 0)},
      {{.purpose = Purpose::kSampling, .owner = 6, .step = 1}, legacy(5, 1, 6)},
  };
  for (const auto& k : cases) {
    const quant::EncodedStream e = quant::encode(k.key);
    EXPECT_EQ(e.stream, k.stream);
    EXPECT_EQ(e.index_offset, 0u);
    const CounterRng rng(99, k.key), raw(99, k.stream);
    for (uint64_t i : {uint64_t{0}, uint64_t{1}, uint64_t{5}, uint64_t{1} << 30, quant::kMaxIndex - 1}) {
      EXPECT_EQ(rng.u32(i), raw.u32(i)) << i;
      EXPECT_EQ(rng.u32(i), philox_draw(99, k.stream, i)) << i;
    }
  }
}

TEST(StreamKey, APassOffsetsTheBlockIndex) {
  // Pass p of a key is its stream with every element index moved up by p·2^40 (the block index's top bits).
  for (uint32_t pass : {1u, 2u, 77u, quant::kMaxPass - 1}) {
    const StreamKey key{.purpose = Purpose::kRounding, .owner = 5, .slot = 1, .pass = pass, .step = 11};
    const quant::EncodedStream e = quant::encode(key);
    EXPECT_EQ(e.stream, legacy(1, 11, 21));
    EXPECT_EQ(e.index_offset, uint64_t{pass} << 40);
    const CounterRng rng(3, key);
    std::vector<uint32_t> fill(37);
    rng.fill_u32(6, fill.size(), fill.data());  // head, SIMD blocks and tail
    for (std::size_t i = 0; i < fill.size(); ++i) {
      ASSERT_EQ(fill[i], philox_draw(3, e.stream, e.index_offset + 6 + i)) << pass << " " << i;
      ASSERT_EQ(fill[i], rng.u32(6 + i));
    }
  }
}

TEST(StreamKey, PassesOfOneStepDrawIndependently) {
  // The same layer and step: pass 0 and pass 1 differ, the same pass repeats.
  StepContext p0{nullptr, nullptr, 42, 9};
  StepContext p1 = p0;
  p1.pass = 1;
  const CounterRng a = p0.rounding_rng(3, kOutputGradSlot), b = p1.rounding_rng(3, kOutputGradSlot);
  const CounterRng again = StepContext{nullptr, nullptr, 42, 9}.rounding_rng(3, kOutputGradSlot);
  std::vector<uint32_t> da(4096), db(4096), dc(4096);
  a.fill_u32(0, da.size(), da.data());
  b.fill_u32(0, db.size(), db.data());
  again.fill_u32(0, dc.size(), dc.data());
  EXPECT_EQ(da, dc);
  std::size_t equal = 0;
  for (std::size_t i = 0; i < da.size(); ++i) equal += da[i] == db[i];
  EXPECT_LE(equal, 2u);  // independent 32-bit draws: about 4096 / 2^32 coincidences expected
  // The other slot of the layer, and the same numbers as an optimizer stream, are other streams again.
  EXPECT_NE(p0.rounding_rng(3, 2).u32(0), a.u32(0));
  EXPECT_NE(CounterRng(42, StreamKey{.purpose = Purpose::kUpdate, .owner = 3, .slot = 1, .step = 9}).u32(0), a.u32(0));
}

TEST(StreamKey, PassesRoundALayersGradientIndependently) {
  // A Linear backward in pass 0 twice gives the same weight gradient; in pass 1 another stochastic rounding.
  LinearSpec s;
  s.in = 32;
  s.out = 16;
  s.signed_input = true;
  s.grad_bits = 4;  // coarse ShiftQuant: most elements are rounded stochastically
  Linear lin(s, 3, 1);
  const Tensor x = random_i32(8, 32, 1 << 16, -16, 1), dy = random_i32(8, 16, 1 << 24, -30, 2);
  auto wgrad = [&](uint32_t pass) {
    Tape tape;
    StepContext ctx{nullptr, &tape, 5, 7};
    ctx.pass = pass;
    lin.weight().has_grad = false;
    const VarPtr y = lin.forward(ctx, var(Tensor(x)));
    y->grad = dy;
    y->has_grad = true;
    tape.backward();
    return std::vector<int32_t>(lin.weight().grad.data<int32_t>(),
                                lin.weight().grad.data<int32_t>() + lin.weight().grad.size());
  };
  const std::vector<int32_t> a = wgrad(0), b = wgrad(0), c = wgrad(1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(StreamKey, DistinctKeysGiveDistinctStreams) {
  std::set<std::pair<uint64_t, uint64_t>> seen;
  std::size_t keys = 0;
  for (Purpose p :
       {Purpose::kRounding, Purpose::kUpdate, Purpose::kInit, Purpose::kShuffle, Purpose::kAugment, Purpose::kSampling})
    for (uint32_t owner : {0u, 1u, 5u, 4095u})
      for (uint32_t slot : {0u, 1u, 3u})
        for (uint32_t pass : {0u, 1u, 9u})
          for (uint64_t step : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 30}) {
            const bool slotted = p == Purpose::kRounding || p == Purpose::kUpdate;
            if (!slotted && slot != 0) continue;
            const quant::EncodedStream e =
                quant::encode({.purpose = p, .owner = owner, .slot = slot, .pass = pass, .step = step});
            seen.emplace(e.stream, e.index_offset);
            ++keys;
          }
  EXPECT_EQ(seen.size(), keys);  // offsets are multiples of 2^40 > every index: distinct counters too
}

// `fn` throws UsageError whose message contains `text`.
template <typename Fn>
void expect_usage_error(Fn fn, const std::string& text) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected: " << text;
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(StreamKey, FieldsBeyondTheLayoutAreRefused) {
  auto enc = [](StreamKey k) { return [k] { quant::encode(k); }; };
  expect_usage_error(enc({.purpose = Purpose::kRounding, .owner = 1u << 17}),
                     "random stream key (rounding): layer id 131072 is out of range 0..131071");
  expect_usage_error(enc({.purpose = Purpose::kRounding, .slot = 4}), "slot 4 is out of range 0..3");
  expect_usage_error(enc({.purpose = Purpose::kUpdate, .owner = 1u << 15}),
                     "(update): parameter id 32768 is out of range 0..32767");
  expect_usage_error(enc({.purpose = Purpose::kInit, .owner = 1u << 20}),
                     "(init): parameter id 1048576 is out of range 0..1048575");
  expect_usage_error(enc({.purpose = Purpose::kShuffle, .slot = 1}), "(shuffle): slot 1 is out of range 0..0");
  expect_usage_error(enc({.purpose = Purpose::kRounding, .pass = quant::kMaxPass}), "pass 1048576 is out of range");
  expect_usage_error(enc({.purpose = Purpose::kAugment, .step = quant::kMaxStep}),
                     "step 1099511627776 is out of range");
  expect_usage_error(enc({.purpose = static_cast<Purpose>(0)}), "unknown purpose 0");
  // The largest values are accepted.
  EXPECT_NO_THROW(quant::encode({.purpose = Purpose::kRounding,
                                 .owner = (1u << 17) - 1,
                                 .slot = 3,
                                 .pass = quant::kMaxPass - 1,
                                 .step = quant::kMaxStep - 1}));
  // Through the step context: a layer id beyond the layout.
  const StepContext ctx{nullptr, nullptr, 0, 0};
  expect_usage_error([&] { ctx.rounding_rng(1u << 17, kOutputGradSlot); }, "layer id 131072");
  // Element indices stop at 2^40, where pass 1 begins.
  const CounterRng rng(0, StreamKey{});
  EXPECT_THROW(rng.u32(quant::kMaxIndex), std::out_of_range);
  uint32_t out[8];
  EXPECT_THROW(rng.fill_u32(quant::kMaxIndex - 4, 8, out), std::out_of_range);
  EXPECT_NO_THROW(rng.fill_u32(quant::kMaxIndex - 8, 8, out));
}

}  // namespace
}  // namespace qtrain
