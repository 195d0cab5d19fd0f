// Target selection for the Highway kernels (see dispatch.h).
//
// Highway keeps one process-wide "chosen target" mask; HWY_DYNAMIC_DISPATCH indexes every exported function
// table with it. Forcing a target mocks the CPU's supported set (SetSupportedTargetsForTest) and refreshes that
// mask, so every kernel in the library — and any other Highway code in the process — switches together.
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/dispatch.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/dispatch.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
// Which target this copy of the code was compiled for: the dispatched one tells us the active target.
int64_t CompiledTarget() { return HWY_TARGET; }
}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace qtrain::kernels {
HWY_EXPORT(CompiledTarget);

namespace {

std::mutex& force_mutex() {
  static std::mutex mu;
  return mu;
}

// Compiled-in targets this CPU supports, best (lowest bit) first. Computed once, before qtrain mocks anything.
const std::vector<Target>& all_targets() {
  static const std::vector<Target> targets = [] {
    std::vector<Target> out;
    for (int64_t bits = hwy::SupportedTargets() & HWY_TARGETS; bits != 0; bits &= bits - 1) {
      const int64_t bit = bits & -bits;
      out.push_back({bit, hwy::TargetName(bit)});
    }
    return out;
  }();
  return targets;
}

bool same_name(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

bool force_locked(const std::string& name) {
  int64_t mask = 0;  // 0 switches Highway's mock off: back to what the CPU supports
  if (!name.empty()) {
    for (const Target& t : all_targets()) {
      if (same_name(t.name, name)) mask = t.bits;
    }
    if (mask == 0) return false;
  }
  hwy::SetSupportedTargetsForTest(mask);
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  return true;
}

std::string names_of(const std::vector<Target>& targets) {
  std::string s;
  for (const Target& t : targets) s += (s.empty() ? "" : ", ") + t.name;
  return s;
}

}  // namespace

namespace detail {
// Called by every kernel entry point (a guard check after the first call).
void ensure_dispatch_ready() {
  static const bool ready = [] {
    const std::lock_guard<std::mutex> lock(force_mutex());
    all_targets();  // snapshot the real set before any mock
    const char* env = std::getenv("QTRAIN_KERNEL_TARGET");
    if (env != nullptr && *env != '\0' && !force_locked(env)) {
      std::fprintf(stderr,
                   "qtrain: QTRAIN_KERNEL_TARGET=%s is not a kernel target available on this CPU (available: %s); "
                   "using %s.\n",
                   env, names_of(all_targets()).c_str(), all_targets().front().name.c_str());
    }
    return true;
  }();
  (void)ready;
}
}  // namespace detail

std::vector<Target> available_targets() {
  detail::ensure_dispatch_ready();
  return all_targets();
}

Target active_target() {
  detail::ensure_dispatch_ready();
  const int64_t bits = HWY_DYNAMIC_DISPATCH(CompiledTarget)();
  return {bits, hwy::TargetName(bits)};
}

bool force_target(const std::string& name) {
  detail::ensure_dispatch_ready();
  const std::lock_guard<std::mutex> lock(force_mutex());
  return force_locked(name);
}

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
