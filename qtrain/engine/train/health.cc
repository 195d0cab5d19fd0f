#include "qtrain/engine/train/health.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>

#include "qtrain/quant/error.h"

namespace qtrain {

HealthMonitor::HealthMonitor(const HealthConfig& cfg) : cfg_(cfg) {
  if (!(cfg.loss_factor > 1) || cfg.diverge_steps < 1 || cfg.zero_grad_window < 1 || cfg.zero_grad_window > 64 ||
      !(cfg.zero_grad_fraction > 0 && cfg.zero_grad_fraction <= 1) || cfg.clean_window < 0 || cfg.clean_window > 64)
    throw UsageError(
        "health check: the loss factor must be > 1, diverge_steps >= 1, the zero-gradient window 1..64 with a "
        "fraction in (0, 1], and the clean window 0..64");
}

namespace {
uint64_t low_bits(int n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }
}  // namespace

bool HealthMonitor::clean() const {
  return state_.diverge_streak == 0 && (state_.zero_grad_history & low_bits(cfg_.clean_window)) == 0;
}

std::string HealthMonitor::observe(int epoch, double running_loss, double loss, bool weight_grads_zero) {
  if (!cfg_.enabled) return "";
  char buf[256];
  if (!std::isfinite(loss)) {
    std::snprintf(buf, sizeof buf, "the loss is not finite (%g)", loss);
    return buf;
  }
  if (epoch == 1 && std::isfinite(running_loss) && running_loss > 0 &&
      (state_.reference == 0 || running_loss < state_.reference))
    state_.reference = running_loss;
  const double limit = cfg_.loss_factor * state_.reference;
  state_.diverge_streak = state_.reference > 0 && loss > limit ? state_.diverge_streak + 1 : 0;
  state_.zero_grad_history = (state_.zero_grad_history << 1) | (weight_grads_zero ? 1 : 0);
  state_.steps_seen = std::min(state_.steps_seen + 1, 64);
  const int window = cfg_.zero_grad_window;
  const int zeros = std::popcount(state_.zero_grad_history & low_bits(window));
  const int needed = static_cast<int>(std::ceil(cfg_.zero_grad_fraction * window));
  if (state_.diverge_streak >= cfg_.diverge_steps) {
    std::snprintf(buf, sizeof buf,
                  "the loss diverged: it has been above %g (%g x the first epoch's running loss %.4f) for %d "
                  "consecutive steps (now %.4f)",
                  limit, cfg_.loss_factor, state_.reference, state_.diverge_streak, loss);
    return buf;
  }
  if (state_.steps_seen >= window && zeros >= needed) {
    std::snprintf(buf, sizeof buf,
                  "every weight gradient was exactly zero in %d of the last %d steps (the gradients underflow or "
                  "the network has died; loss now %.4f)",
                  zeros, window, loss);
    return buf;
  }
  return "";
}

}  // namespace qtrain
