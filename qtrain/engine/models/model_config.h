// A model's configuration: a flat map from keys to typed values (integer, number, string, list of integers), the
// form in which the registry builds a model and model files and checkpoints record it.
//
// Getters take the value to use when the key is absent and the valid range, and throw UsageError naming the key
// and the range when the stored value is of another type or out of range ("model config 'width': 0 is out of
// range 1..4096"), so a factory states its schema where it reads it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace qtrain {

class ModelConfig {
 public:
  using Ints = std::vector<int64_t>;
  using Value = std::variant<int64_t, double, std::string, Ints>;

  ModelConfig& set(const std::string& key, int64_t v) { return put(key, Value(v)); }
  ModelConfig& set(const std::string& key, int v) { return put(key, Value(int64_t{v})); }
  ModelConfig& set(const std::string& key, double v) { return put(key, Value(v)); }
  ModelConfig& set(const std::string& key, std::string v) { return put(key, Value(std::move(v))); }
  ModelConfig& set(const std::string& key, const char* v) { return put(key, Value(std::string(v))); }
  ModelConfig& set(const std::string& key, Ints v) { return put(key, Value(std::move(v))); }

  bool has(const std::string& key) const { return values_.count(key) != 0; }
  int64_t get_int(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const;
  double get_number(const std::string& key, double fallback, double lo, double hi) const;  // finite; an int reads too
  // One of `valid` (which the fallback should be too).
  std::string get_string(const std::string& key, const std::string& fallback,
                         const std::vector<std::string>& valid) const;
  // A list of min_count..max_count integers, each in lo..hi.
  Ints get_ints(const std::string& key, const Ints& fallback, std::size_t min_count, std::size_t max_count, int64_t lo,
                int64_t hi) const;

  // Every entry, ordered by key (the serialized form).
  const std::map<std::string, Value>& values() const { return values_; }
  bool operator==(const ModelConfig& o) const { return values_ == o.values_; }
  bool operator!=(const ModelConfig& o) const { return !(*this == o); }
  std::string describe() const;  // "blocks=2 width=8"

  // Keys are 1..64 characters of [A-Za-z0-9_.-]; set() throws UsageError for another.
  static bool valid_key(const std::string& key);

 private:
  ModelConfig& put(const std::string& key, Value v);
  std::map<std::string, Value> values_;
};

}  // namespace qtrain
