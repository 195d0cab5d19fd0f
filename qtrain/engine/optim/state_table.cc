#include "qtrain/engine/optim/state_table.h"

#include <stdexcept>
#include <utility>

namespace qtrain {

StateTable::StateTable(std::string owner, std::vector<std::string> slots)
    : owner_(std::move(owner)), slots_(std::move(slots)) {}

std::size_t StateTable::slot_index(const std::string& slot) const {
  for (std::size_t k = 0; k < slots_.size(); ++k)
    if (slots_[k] == slot) return k;
  return slots_.size();
}

Tensor* StateTable::of(const Param& p, const std::function<int(std::size_t slot)>& initial_exponent) {
  const auto [it, created] = index_.try_emplace(p.name, entries_.size());
  if (created) {
    Entry e{p.name, {}, 0};
    for (std::size_t k = 0; k < slots_.size(); ++k)
      e.tensors.emplace_back(p.master.rows(), p.master.cols(), DType::kI32, initial_exponent(k));
    entries_.push_back(std::move(e));
  }
  Entry& e = entries_[it->second];
  if (e.call == calls_)
    throw std::logic_error(owner_ + "::step: two parameters are called '" + p.name +
                           "' (optimizer state is keyed by name)");
  e.call = calls_;
  for (std::size_t k = 0; k < slots_.size(); ++k) {
    const Tensor& t = e.tensors[k];
    if (t.rows() != p.master.rows() || t.cols() != p.master.cols())
      throw std::logic_error(owner_ + "::step: " + p.name + " is " + p.master.describe() + ", its " + slots_[k] +
                             " " + t.describe());
  }
  return e.tensors.data();
}

const Tensor* StateTable::find(const std::string& param, const std::string& slot) const {
  const auto it = index_.find(param);
  const std::size_t k = slot_index(slot);
  if (it == index_.end() || k == slots_.size()) return nullptr;
  return &entries_[it->second].tensors[k];
}

std::vector<NamedState> StateTable::state() const {
  std::vector<NamedState> out;
  out.reserve(entries_.size() * slots_.size());
  for (const Entry& e : entries_)
    for (std::size_t k = 0; k < slots_.size(); ++k) out.push_back({e.param, slots_[k], e.tensors[k]});
  return out;
}

void StateTable::check(const NamedState& s, const Param& p, int max_offset) const {
  const std::string what = s.param + " " + s.slot;
  if (slot_index(s.slot) == slots_.size()) {
    std::string list;
    for (const std::string& k : slots_) list += (list.empty() ? "\"" : ", \"") + k + "\"";
    throw std::invalid_argument(what + ": " + owner_ + " keeps only " + (slots_.size() == 1 ? "a " : "") + list +
                                (slots_.size() == 1 ? " slot" : " slots"));
  }
  if (s.param != p.name) throw std::invalid_argument(what + ": state of another parameter than " + p.name);
  if (s.value.dtype() != DType::kI32 || s.value.axis() != ScaleAxis::kTensor)
    throw std::invalid_argument(what + " must be int32 with one exponent, not " + s.value.describe());
  if (s.value.rows() != p.master.rows() || s.value.cols() != p.master.cols())
    throw std::invalid_argument(what + " is " + std::to_string(s.value.rows()) + "x" + std::to_string(s.value.cols()) +
                                ", the parameter " + std::to_string(p.master.rows()) + "x" +
                                std::to_string(p.master.cols()));
  const int e = s.value.exponent(), ew = p.master.exponent();
  if (e < ew - max_offset || e > ew + max_offset)
    throw std::invalid_argument(what + " exponent " + std::to_string(e) + " is more than " +
                                std::to_string(max_offset) + " away from its weights' exponent " + std::to_string(ew));
}

void StateTable::load(std::vector<NamedState> state, const std::vector<Param*>& params,
                      const std::function<void(const NamedState&, const Param&)>& check_entry) {
  std::unordered_map<std::string, const Param*> by_name;
  for (const Param* p : params) by_name.emplace(p->name, p);
  std::vector<Entry> entries;
  std::vector<std::vector<bool>> present;
  std::unordered_map<std::string, std::size_t> index;
  for (NamedState& s : state) {
    const auto p = by_name.find(s.param);
    if (p == by_name.end()) throw std::invalid_argument(s.param + " " + s.slot + ": no such parameter");
    check_entry(s, *p->second);
    const std::size_t k = slot_index(s.slot);  // check_entry accepted the slot
    const auto [it, created] = index.try_emplace(s.param, entries.size());
    if (created) {
      entries.push_back({s.param, std::vector<Tensor>(slots_.size()), 0});
      present.emplace_back(slots_.size(), false);
    }
    if (present[it->second][k]) throw std::invalid_argument(s.param + " " + s.slot + " is given twice");
    present[it->second][k] = true;
    entries[it->second].tensors[k] = std::move(s.value);
  }
  for (std::size_t i = 0; i < entries.size(); ++i)
    for (std::size_t k = 0; k < slots_.size(); ++k)
      if (!present[i][k])
        throw std::invalid_argument(entries[i].param + " has no \"" + slots_[k] + "\" state (" + owner_ +
                                    " needs every slot of a parameter it has updated)");
  entries_ = std::move(entries);
  index_ = std::move(index);
}

}  // namespace qtrain
