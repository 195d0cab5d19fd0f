#include "qtrain/engine/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "qtrain/quant/error.h"

namespace qtrain {

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "step") return ScheduleKind::kStep;
  if (name == "cosine") return ScheduleKind::kCosine;
  if (name == "onecycle" || name == "one-cycle") return ScheduleKind::kOneCycle;
  throw UsageError("unknown schedule '" + name + "': valid schedules are constant, step, cosine, onecycle");
}

const char* schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::kConstant: return "constant";
    case ScheduleKind::kStep: return "step";
    case ScheduleKind::kCosine: return "cosine";
    case ScheduleKind::kOneCycle: return "onecycle";
  }
  return "?";
}

namespace {
// Cosine interpolation from a (t = 0) to b (t = 1).
double cos_anneal(double a, double b, double t) { return b + (a - b) * 0.5 * (1.0 + std::cos(std::numbers::pi * t)); }
}  // namespace

double LrSchedule::at(uint64_t step) const {
  const double total = static_cast<double>(std::max<uint64_t>(total_steps, 1));
  const double s = std::min(static_cast<double>(step), total);
  switch (kind) {
    case ScheduleKind::kConstant: return peak;
    case ScheduleKind::kStep: return peak * (s >= 0.75 * total ? gamma * gamma : s >= 0.5 * total ? gamma : 1.0);
    case ScheduleKind::kCosine: return cos_anneal(peak, 0.0, s / total);
    case ScheduleKind::kOneCycle: {
      // PyTorch OneCycleLR (anneal_strategy='cos', three_phase=False) phase boundaries.
      const double initial = peak / div_factor, final_lr = initial / final_div_factor;
      const double up_end = pct_start * total - 1.0, down_end = total - 1.0;
      if (s <= up_end) return cos_anneal(initial, peak, up_end > 0 ? s / up_end : 1.0);
      return cos_anneal(peak, final_lr, std::min(1.0, (s - up_end) / std::max(down_end - up_end, 1.0)));
    }
  }
  return peak;
}

}  // namespace qtrain
