// Training health: notices a run that has gone wrong and stops it with a message a user can act on, instead of
// letting it burn hours and overwrite good checkpoints with a broken model.
//
// Two conditions, checked after every step:
//  * diverging loss: the step's loss is not finite, or it has been above loss_factor × the reference loss for
//    diverge_steps consecutive steps. The reference is the lowest running (mean-so-far) loss of the run's first
//    epoch, so it is set by the time a healthy run has made progress and is not inflated by an explosion early on.
//  * vanishing gradients: every weight gradient (all parameters but biases) was exactly zero in at least
//    zero_grad_fraction of the last zero_grad_window steps — the quantized gradients underflow, or the ReLUs have
//    died (the usual end of a too-high learning rate in integer arithmetic: the weights collapse and the loss sits
//    at chance level). A window rather than a streak: a dead network still moves its biases, and now and then one
//    wakes a unit for a step (seen as one non-zero step in 16), which would reset a streak forever.
// The state is a few numbers; checkpoints carry it, so a resumed run judges exactly as an uninterrupted one.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace qtrain {

struct HealthConfig {
  bool enabled = true;
  double loss_factor = 10.0;
  int diverge_steps = 20;
  int zero_grad_window = 50;         // steps, 1..64
  double zero_grad_fraction = 0.9;   // (0, 1]
  int clean_window = 32;             // see clean(); 0..64
};

struct HealthState {
  double reference = 0;             // lowest running loss of the first epoch; 0 until the first step
  int diverge_streak = 0;           // consecutive steps above loss_factor × reference
  uint64_t zero_grad_history = 0;   // bit i: the step i steps ago had all-zero weight gradients
  int steps_seen = 0;               // steps observed, saturating at 64
};

// Thrown by the trainer when the run is unhealthy. what(): one sentence saying what happened and where.
class TrainingHealthError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class HealthMonitor {
 public:
  explicit HealthMonitor(const HealthConfig& cfg = {});
  // One step: `epoch` is 1-based, `running_loss` the epoch's mean loss so far (including this step), `loss` this
  // step's, `weight_grads_zero` whether every weight gradient of this step was exactly zero. Returns an empty
  // string while the run is healthy, else why it must stop.
  std::string observe(int epoch, double running_loss, double loss, bool weight_grads_zero);
  // No anomaly in progress: no diverging streak, and no all-zero-gradient step among the last clean_window steps.
  // A checkpoint written now holds a state from before any sign of trouble.
  bool clean() const;
  const HealthState& state() const { return state_; }
  void set_state(const HealthState& s) { state_ = s; }
  const HealthConfig& config() const { return cfg_; }

 private:
  HealthConfig cfg_;
  HealthState state_;
};

}  // namespace qtrain
