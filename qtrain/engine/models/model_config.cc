#include "qtrain/engine/models/model_config.h"

#include <cmath>
#include <sstream>

#include "qtrain/quant/error.h"

namespace qtrain {

namespace {

const char* type_name(const ModelConfig::Value& v) {
  switch (v.index()) {
    case 0:
      return "an integer";
    case 1:
      return "a number";
    case 2:
      return "a string";
    default:
      return "a list of integers";
  }
}

[[noreturn]] void wrong_type(const std::string& key, const ModelConfig::Value& v, const char* want) {
  throw UsageError("model config '" + key + "': must be " + want + " (found " + type_name(v) + ")");
}

std::string range(int64_t lo, int64_t hi) { return std::to_string(lo) + ".." + std::to_string(hi); }

}  // namespace

bool ModelConfig::valid_key(const std::string& key) {
  if (key.empty() || key.size() > 64) return false;
  for (char c : key)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
          c == '-'))
      return false;
  return true;
}

ModelConfig& ModelConfig::put(const std::string& key, Value v) {
  if (!valid_key(key))
    throw UsageError("model config key '" + key + "' is not 1..64 characters of letters, digits, '_', '.', '-'");
  values_[key] = std::move(v);
  return *this;
}

int64_t ModelConfig::get_int(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const {
  const auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  const int64_t* v = std::get_if<int64_t>(&it->second);
  if (v == nullptr) wrong_type(key, it->second, ("an integer in " + range(lo, hi)).c_str());
  if (*v < lo || *v > hi)
    throw UsageError("model config '" + key + "': " + std::to_string(*v) + " is out of range " + range(lo, hi));
  return *v;
}

double ModelConfig::get_number(const std::string& key, double fallback, double lo, double hi) const {
  const auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  double v;
  if (const double* d = std::get_if<double>(&it->second))
    v = *d;
  else if (const int64_t* i = std::get_if<int64_t>(&it->second))
    v = static_cast<double>(*i);
  else
    wrong_type(key, it->second, "a number");
  if (!std::isfinite(v) || v < lo || v > hi) {
    std::ostringstream o;
    o << "model config '" << key << "': " << v << " is out of range [" << lo << ", " << hi << "]";
    throw UsageError(o.str());
  }
  return v;
}

std::string ModelConfig::get_string(const std::string& key, const std::string& fallback,
                                    const std::vector<std::string>& valid) const {
  const auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  std::string list;
  for (const std::string& s : valid) list += (list.empty() ? "" : ", ") + s;
  const std::string* v = std::get_if<std::string>(&it->second);
  if (v == nullptr) wrong_type(key, it->second, ("one of " + list).c_str());
  for (const std::string& s : valid)
    if (*v == s) return *v;
  throw UsageError("model config '" + key + "': unknown value '" + *v + "'; valid values: " + list);
}

ModelConfig::Ints ModelConfig::get_ints(const std::string& key, const Ints& fallback, std::size_t min_count,
                                        std::size_t max_count, int64_t lo, int64_t hi) const {
  const auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  const std::string want =
      std::to_string(min_count) + ".." + std::to_string(max_count) + " integers in " + range(lo, hi);
  const Ints* v = std::get_if<Ints>(&it->second);
  if (v == nullptr) wrong_type(key, it->second, ("a list of " + want).c_str());
  if (v->size() < min_count || v->size() > max_count)
    throw UsageError("model config '" + key + "': " + std::to_string(v->size()) + " entries, valid: " + want);
  for (std::size_t i = 0; i < v->size(); ++i)
    if ((*v)[i] < lo || (*v)[i] > hi)
      throw UsageError("model config '" + key + "[" + std::to_string(i) + "]': " + std::to_string((*v)[i]) +
                       " is out of range " + range(lo, hi));
  return *v;
}

std::string ModelConfig::describe() const {
  std::ostringstream o;
  for (const auto& [key, value] : values_) {
    if (o.tellp() > 0) o << ' ';
    o << key << '=';
    if (const int64_t* i = std::get_if<int64_t>(&value)) o << *i;
    if (const double* d = std::get_if<double>(&value)) o << *d;
    if (const std::string* s = std::get_if<std::string>(&value)) o << *s;
    if (const Ints* l = std::get_if<Ints>(&value))
      for (std::size_t k = 0; k < l->size(); ++k) o << (k ? "," : "") << (*l)[k];
  }
  return o.str();
}

}  // namespace qtrain
