// Running a kernel test once per SIMD target: force each target the CPU supports in turn.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qtrain/kernels/dispatch.h"

namespace qtrain::kernels {

// Forces one target for the lifetime of the object; restores the best target afterwards.
class ForcedTarget {
 public:
  explicit ForcedTarget(const std::string& name) { ok_ = force_target(name); }
  ~ForcedTarget() { force_target(""); }
  ForcedTarget(const ForcedTarget&) = delete;
  ForcedTarget& operator=(const ForcedTarget&) = delete;
  bool ok() const { return ok_; }

 private:
  bool ok_ = false;
};

// Names of every target compiled in and supported here, best first (the parameters of per-target tests).
inline std::vector<std::string> target_names() {
  std::vector<std::string> names;
  for (const Target& t : available_targets()) names.push_back(t.name);
  return names;
}

// int32 values of every magnitude, with the limits and small values over-represented.
inline int32_t random_i32(std::mt19937_64& rng) {
  constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
  constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
  switch (rng() % 8) {
    case 0: {
      constexpr int32_t kSpecial[] = {kI32Min, kI32Max, kI32Min + 1, kI32Max - 1, 0, 1, -1, 2, -2};
      return kSpecial[rng() % std::size(kSpecial)];
    }
    case 1:
      return static_cast<int32_t>(rng() % 9) - 4;
    default: {
      const int bits = static_cast<int>(rng() % 32);
      const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << bits) - 1));
      return static_cast<int32_t>((rng() & 1) ? -mag : mag);
    }
  }
}

// A test fixture parameterized by target name: the whole test runs with that target forced.
// Use: class MyKernelTarget : public PerTargetTest {}; TEST_P(MyKernelTarget, …);
//      INSTANTIATE_TEST_SUITE_P(Targets, MyKernelTarget, ::testing::ValuesIn(target_names()));
class PerTargetTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    forced_ = std::make_unique<ForcedTarget>(GetParam());
    ASSERT_TRUE(forced_->ok()) << "cannot force target " << GetParam();
    ASSERT_EQ(active_target().name, GetParam());
  }
  void TearDown() override { forced_.reset(); }

 private:
  std::unique_ptr<ForcedTarget> forced_;
};

}  // namespace qtrain::kernels
