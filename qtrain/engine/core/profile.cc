#include "qtrain/engine/core/profile.h"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace qtrain {

StepProfile::StepProfile(std::vector<std::string> layer_names)
    : names_(std::move(layer_names)), forward_ns_(names_.size(), 0), backward_ns_(names_.size(), 0) {}

int64_t StepProfile::total_ns() const {
  int64_t t = 0;
  for (std::size_t i = 0; i < names_.size(); ++i) t += forward_ns_[i] + backward_ns_[i];
  for (const int64_t p : phase_ns_) t += p;
  return t;
}

std::string StepProfile::table() const {
  const double steps = static_cast<double>(std::max<uint64_t>(steps_, 1));
  const double total = static_cast<double>(std::max<int64_t>(total_ns(), 1));
  // Layer names can be long (a residual block names its body): the column is capped, longer names cut.
  constexpr std::size_t kMaxWidth = 60;
  std::size_t width = 20;
  for (const std::string& n : names_) width = std::min(kMaxWidth, std::max(width, n.size() + 4));
  std::string out;
  char line[512];
  auto row = [&](std::string what, int64_t fwd, int64_t bwd) {
    if (what.size() > width) what = what.substr(0, width - 3) + "...";
    std::snprintf(line, sizeof line, "%-*s %10.3f %10.3f %7.1f%%\n", static_cast<int>(width), what.c_str(),
                  1e-6 * static_cast<double>(fwd) / steps, 1e-6 * static_cast<double>(bwd) / steps,
                  100.0 * static_cast<double>(fwd + bwd) / total);
    out += line;
  };
  std::snprintf(line, sizeof line, "%-*s %10s %10s %8s\n", static_cast<int>(width), "per step", "fwd ms", "bwd ms",
                "share");
  out += line;
  for (std::size_t i = 0; i < names_.size(); ++i)
    row(std::to_string(i) + " " + names_[i], forward_ns_[i], backward_ns_[i]);
  row("batch gather", phase_ns(Phase::kGather), 0);
  row("loss", phase_ns(Phase::kLoss), 0);
  row("optimizer", phase_ns(Phase::kOptimizer), 0);
  std::snprintf(line, sizeof line, "%-*s %10.3f ms per step over %llu steps\n", static_cast<int>(width), "total",
                1e-6 * total / steps, static_cast<unsigned long long>(steps_));
  out += line;
  return out;
}

}  // namespace qtrain
