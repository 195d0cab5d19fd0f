// The per-parameter state of an optimizer (SGD's momentum, AdamW's m and v): tensors keyed by parameter name and
// slot name, made on a parameter's first update, listed for checkpoints in the order of first updates, and
// replaced as a whole by a checkpoint's (every entry checked first: a bad entry leaves the table unchanged).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "qtrain/engine/core/param.h"
#include "qtrain/engine/core/tensor.h"

namespace qtrain {

// One tensor of an optimizer's per-parameter state: the parameter's name, the slot ("momentum"; AdamW's "m" and
// "v") and the values: int32, one exponent, the parameter's shape, |v| ≤ 2^30 (the bound checkpoints check; the
// optimizers keep every state tensor within it).
struct NamedState {
  std::string param;
  std::string slot;
  Tensor value;
};

class StateTable {
 public:
  // `owner` names the optimizer in messages ("SGD", "AdamW"); `slots` are the state tensors every parameter has.
  StateTable(std::string owner, std::vector<std::string> slots);

  // Call once per Optimizer::step, before of(): of() refuses a name seen twice within one step.
  void begin_step() { ++calls_; }
  // p's tensors, one per slot in the order given to the constructor. Made on p's first update as zeros at p's
  // shape with exponent initial_exponent(slot). std::logic_error when p's name was already updated in this step
  // (state is keyed by name) or p's shape differs from its state's.
  Tensor* of(const Param& p, const std::function<int(std::size_t slot)>& initial_exponent);
  // The tensor of (param, slot), or null before the parameter's first update.
  const Tensor* find(const std::string& param, const std::string& slot) const;

  // One entry per parameter and slot, in the order of first updates (then of slots).
  std::vector<NamedState> state() const;
  // The checks every optimizer makes (std::invalid_argument naming the parameter and slot): a slot of this table,
  // state of p, int32 with one exponent, p's shape, an exponent within max_offset of p's master exponent.
  void check(const NamedState& s, const Param& p, int max_offset) const;
  // Replaces the table. Every entry must name one of `params` and pass `check_entry`; each parameter that has
  // entries has every slot exactly once. std::invalid_argument otherwise (the table is then unchanged).
  void load(std::vector<NamedState> state, const std::vector<Param*>& params,
            const std::function<void(const NamedState&, const Param&)>& check_entry);

 private:
  struct Entry {
    std::string param;
    std::vector<Tensor> tensors;  // one per slot
    uint64_t call = 0;            // the step that last updated it
  };
  std::size_t slot_index(const std::string& slot) const;  // slots_.size() when unknown

  std::string owner_;
  std::vector<std::string> slots_;
  std::vector<Entry> entries_;                          // in the order of first updates (or of load)
  std::unordered_map<std::string, std::size_t> index_;  // parameter name → entry
  uint64_t calls_ = 0;
};

}  // namespace qtrain
