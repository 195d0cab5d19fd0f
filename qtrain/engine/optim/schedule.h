// Learning-rate schedules: control-plane values (the optimizer turns each into a dyadic number).
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

enum class ScheduleKind { kConstant, kStep, kCosine, kOneCycle, kWarmupCosine };

// Parses "constant", "step", "cosine", "onecycle", "warmup-cosine"; throws UsageError listing the valid names.
ScheduleKind parse_schedule(const std::string& name);
const char* schedule_name(ScheduleKind k);

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::kOneCycle;
  double peak = 0.05;          // the base (constant/step/cosine) or maximum (one-cycle) learning rate
  uint64_t total_steps = 1;
  // step: multiply by `gamma` at 50% and 75% of training.
  double gamma = 0.1;
  // one-cycle (PyTorch OneCycleLR defaults): warm up over pct_start of the steps from peak/div_factor, then cosine
  // anneal to peak/(div_factor·final_div_factor).
  double pct_start = 0.3, div_factor = 25.0, final_div_factor = 1e4;
  // warmup-cosine (the transformer recipe): linear warm-up peak·(s + 1)/W over the first W = warmup_steps steps
  // (no step at lr 0), then cosine from peak to 0 over the rest; W ≥ total_steps: warm-up only.
  uint64_t warmup_steps = 0;

  double at(uint64_t step) const;
};

// cos(x) for 0 ≤ x < 4, correctly rounded to the nearest double (see schedule.cc for the error bound): computed
// with integers only, so the schedule gives the same bits with any C library (glibc's cos agrees on every
// argument the tests try). std::logic_error outside the domain.
double cos_rounded(double x);

}  // namespace qtrain
