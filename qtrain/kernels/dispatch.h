// Which Highway target the kernels run on. Dispatch picks the best target that is both compiled in and
// supported by this CPU; a user (or a test) may force a lower one.
//
// Environment: QTRAIN_KERNEL_TARGET=<name> (e.g. AVX2) forces that target on the first kernel call, as
// force_target(name) would; an unknown name prints a warning listing the available targets and keeps the best.
//
// Forcing is process-wide (it sets Highway's global target choice) and must not race with running kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain::kernels {

struct Target {
  int64_t bits;      // Highway's HWY_* target bit
  std::string name;  // Highway's name, e.g. "AVX3_DL", "AVX2", "SSE4", "EMU128"
};

// Targets compiled into the library that this CPU supports, best first.
std::vector<Target> available_targets();
// The target the kernels dispatch to now.
Target active_target();
// Restrict dispatch to `name` (case-insensitive). Returns false (and changes nothing) when the name is not
// an available target. force_target("") restores the best target.
bool force_target(const std::string& name);

}  // namespace qtrain::kernels
