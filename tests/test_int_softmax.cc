// The integer softmax's row kernels (qtrain/kernels/int_softmax.h) against their scalar references on every SIMD
// target, bit for bit: random rows of many lengths with the int32 limits over-represented, all-equal, one-hot and
// INT32_MIN/INT32_MAX rows, the causal mask, every Q16 shift regime, the scales the op can produce; the exponentials
// alone (the loss's); the backward on the forward's own P.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "qtrain/kernels/int_softmax.h"
#include "qtrain/quant/pow2.h"
#include "tests/target_test_util.h"

namespace qtrain::kernels {
namespace {

constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
const std::size_t kLengths[] = {1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 197, 1000};
const int kShifts[] = {-70, -40, -39, -24, -16, -8, -1, 0, 1, 2, 8, 16, 24, 31, 32, 33, 40};
const double kScales[] = {0.25, 0.35355339059327373, 1.0, 0.1, std::ldexp(1.0, -20), 7.3, 44.0, 256.0, 0.99999};

// Row kinds: 0 random_i32, 1 small values (many exact ties of remainders), 2 all equal, 3 one-hot, 4 INT32_MIN/MAX
// alternating, 5 all INT32_MIN, 6 all INT32_MAX, 7 a narrow spread around a random centre.
std::vector<int32_t> make_rows(std::size_t rows, std::size_t cols, std::mt19937_64& rng) {
  std::vector<int32_t> x(rows * cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const int kind = static_cast<int>(rng() % 8);
    const int32_t base = random_i32(rng);
    const std::size_t hot = rng() % cols;
    for (std::size_t c = 0; c < cols; ++c) {
      int32_t& v = x[r * cols + c];
      switch (kind) {
        case 0: v = random_i32(rng); break;
        case 1: v = static_cast<int32_t>(rng() % 7) - 3; break;
        case 2: v = base; break;
        case 3: v = c == hot ? 1000 : 0; break;
        case 4: v = c % 2 ? kI32Max : kI32Min; break;
        case 5: v = kI32Min; break;
        case 6: v = kI32Max; break;
        default: v = static_cast<int32_t>(std::clamp<int64_t>(int64_t{base} + static_cast<int64_t>(rng() % 4096) - 2048,
                                                            kI32Min, kI32Max));
      }
    }
  }
  return x;
}

class IntSoftmaxTarget : public PerTargetTest {};

TEST_P(IntSoftmaxTarget, ForwardFromInt32MatchesReference) {
  std::mt19937_64 rng(1);
  for (std::size_t cols : kLengths)
    for (bool causal : {false, true}) {
      const std::size_t rows = causal ? 2 * cols : 24;
      const std::vector<int32_t> x = make_rows(rows, cols, rng);
      for (double scale : kScales) {
        const quant::Dyadic c = quant::to_dyadic(scale);
        std::vector<int> shift(rows);
        for (auto& s : shift) s = kShifts[rng() % std::size(kShifts)];
        const SoftmaxRows shape{rows, cols, causal ? 3 * cols : 0, causal ? cols : 0};
        std::vector<int32_t> want(rows * cols, -7), got(rows * cols, -7);
        ref::softmax_forward_i32(x.data(), shift.data(), shape, c.mantissa, c.shift, want.data());
        softmax_forward_i32(x.data(), shift.data(), shape, c.mantissa, c.shift, got.data());
        for (std::size_t r = 0; r < rows; ++r) {
          int64_t sum = 0;
          for (std::size_t j = 0; j < cols; ++j) {
            ASSERT_EQ(got[r * cols + j], want[r * cols + j])
                << cols << " cols, causal " << causal << ", scale " << scale << ", shift " << shift[r] << ", ("
                << r << ", " << j << ")";
            if (j < shape.visible(r)) sum += got[r * cols + j];
          }
          ASSERT_EQ(sum, 32768) << cols << " cols, row " << r;
          for (std::size_t j = shape.visible(r); j < cols; ++j) ASSERT_EQ(got[r * cols + j], -7) << "masked written";
        }
      }
    }
}

TEST_P(IntSoftmaxTarget, ForwardFromQ16MatchesReference) {
  std::mt19937_64 rng(2);
  for (std::size_t cols : kLengths) {
    const std::size_t rows = 12;
    std::vector<int64_t> z(rows * cols);
    for (std::size_t r = 0; r < rows; ++r) {
      const int bits = static_cast<int>(rng() % 52);  // up to ±2^51: past the 2^46 clamp
      for (std::size_t j = 0; j < cols; ++j) {
        const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << bits) - 1));
        z[r * cols + j] = (rng() & 1) ? -mag : mag;
      }
    }
    for (double scale : kScales) {
      const quant::Dyadic c = quant::to_dyadic(scale);
      const SoftmaxRows shape{rows, cols, 0, 0};
      std::vector<int32_t> want(rows * cols), got(rows * cols);
      ref::softmax_forward_q16(z.data(), shape, c.mantissa, c.shift, want.data());
      softmax_forward_q16(z.data(), shape, c.mantissa, c.shift, got.data());
      ASSERT_EQ(got, want) << cols << " cols, scale " << scale;
    }
  }
}

TEST_P(IntSoftmaxTarget, ExponentialsMatchReference) {
  std::mt19937_64 rng(3);
  for (std::size_t n : kLengths)
    for (int bits : {0, 4, 16, 24, 30, 41, 50, 62}) {
      std::vector<int64_t> z(n);
      for (auto& v : z) {
        const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << bits) - 1));
        v = (rng() & 1) ? -mag : mag;
      }
      std::vector<int64_t> want(n), got(n);
      const int64_t sw = ref::softmax_exp_q30(z.data(), n, want.data());
      ASSERT_EQ(softmax_exp_q30(z.data(), n, got.data()), sw) << n << " values of " << bits << " bits";
      ASSERT_EQ(got, want) << n << " values of " << bits << " bits";
    }
}

TEST_P(IntSoftmaxTarget, BackwardMatchesReference) {
  std::mt19937_64 rng(4);
  for (std::size_t cols : kLengths)
    for (bool causal : {false, true}) {
      const std::size_t rows = causal ? cols : 16;
      const std::vector<int32_t> x = make_rows(rows, cols, rng);
      std::vector<int> shift(rows, -8);
      const SoftmaxRows shape{rows, cols, 0, causal ? cols : 0};
      std::vector<int32_t> p(rows * cols, 0);
      ref::softmax_forward_i32(x.data(), shift.data(), shape, 1 << 15, 17, p.data());
      std::vector<int32_t> g(rows * cols);
      for (auto& v : g) v = random_i32(rng);
      if (rng() % 2) g[rng() % g.size()] = kI32Min;
      uint64_t gmax = 0;
      for (int32_t v : g) gmax = std::max(gmax, magnitude(v));
      int k = 0;
      while ((gmax >> k) > (uint64_t{1} << 15) - 1) ++k;  // as the op: |R(g, k)| ≤ 2^15
      for (int64_t m : {int64_t{1} << 15, int64_t{46341}, int64_t{1} << 16}) {
        std::vector<int64_t> want(rows * cols), got(rows * cols);
        ref::softmax_backward(p.data(), g.data(), rows, cols, k, m, want.data());
        softmax_backward(p.data(), g.data(), rows, cols, k, m, got.data());
        ASSERT_EQ(got, want) << cols << " cols, causal " << causal << ", k " << k << ", m " << m;
      }
      // Small gradients: k = 0.
      for (auto& v : g) v = static_cast<int32_t>(rng() % 65535) - 32767;
      std::vector<int64_t> want(rows * cols), got(rows * cols);
      ref::softmax_backward(p.data(), g.data(), rows, cols, 0, 46341, want.data());
      softmax_backward(p.data(), g.data(), rows, cols, 0, 46341, got.data());
      ASSERT_EQ(got, want) << cols << " cols, k 0";
    }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, IntSoftmaxTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace qtrain::kernels
