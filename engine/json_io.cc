#include "engine/json_io.h"

#include <cmath>
#include <stdexcept>

#include "quant/error.h"

namespace qtrain::json_io {

namespace {
[[noreturn]] void bad(const std::string& path, const std::string& want, const nlohmann::json& found) {
  // Only scalars are shown (dumping a hostile nested value would recurse as deep as it is nested).
  std::string shown = found.is_structured() ? "" : " " + found.dump();
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
  throw std::runtime_error(path + " must be " + want + " (found " + type_of(found) + shown + ")");
}
}  // namespace

std::string type_of(const nlohmann::json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "number";
  if (j.is_string()) return "string";
  if (j.is_boolean()) return "boolean";
  if (j.is_array()) return "array";
  if (j.is_object()) return "object";
  if (j.is_null()) return "null";
  return "value";
}

Fields::Fields(const nlohmann::json& j, std::string path) : j_(j), path_(std::move(path)) {
  if (!j.is_object()) bad(path_.empty() ? "the header" : path_, "an object", j);
}

std::string Fields::path(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

const nlohmann::json& Fields::at(const char* key) const {
  const auto it = j_.find(key);
  if (it == j_.end()) throw std::runtime_error(path(key) + " is missing");
  return *it;
}

Fields Fields::object(const char* key) const { return Fields(at(key), path(key)); }

const nlohmann::json& Fields::array(const char* key) const {
  const nlohmann::json& v = at(key);
  if (!v.is_array()) bad(path(key), "an array", v);
  return v;
}

int64_t integer_value(const nlohmann::json& j, const std::string& path, int64_t lo, int64_t hi) {
  const std::string want = "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  if (j.is_number_unsigned()) {
    const auto u = j.get<uint64_t>();
    if (hi < 0 || u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo))) bad(path, want, j);
    return static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) {
    const auto v = j.get<int64_t>();
    if (v < lo || v > hi) bad(path, want, j);
    return v;
  }
  bad(path, want, j);
}

int64_t Fields::integer(const char* key, int64_t lo, int64_t hi) const {
  return integer_value(at(key), path(key), lo, hi);
}

uint64_t Fields::unsigned_integer(const char* key, uint64_t hi) const {
  const nlohmann::json& v = at(key);
  const std::string want = "an integer in 0.." + std::to_string(hi);
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > hi) bad(path(key), want, v);
    return u;
  }
  if (v.is_number_integer() && v.get<int64_t>() == 0) return 0;  // nlohmann parses "0" as unsigned; be safe
  bad(path(key), want, v);
}

double Fields::number(const char* key, double lo, double hi) const {
  const nlohmann::json& v = at(key);
  if (!v.is_number()) bad(path(key), "a number", v);
  const auto d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad(path(key), "a finite number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
  return d;
}

std::string Fields::string(const char* key) const {
  const nlohmann::json& v = at(key);
  if (!v.is_string()) bad(path(key), "a string", v);
  return v.get<std::string>();
}

nlohmann::json spec_to_json(const ModelSpec& s) {
  return {{"kind", s.kind},
          {"sizes", s.sizes},
          {"bits", {{"weight", s.bits.weight}, {"act", s.bits.act}, {"grad", s.bits.grad}}},
          {"input_bits", s.input_bits},
          {"groups", s.groups}};
}

ModelSpec spec_from_json(const Fields& f) {
  ModelSpec s;
  s.kind = f.string("kind");
  const nlohmann::json& sizes = f.array("sizes");
  if (sizes.size() < 2 || sizes.size() > 1024)
    throw std::runtime_error(f.path("sizes") + " must list 2..1024 layer sizes (found " +
                             std::to_string(sizes.size()) + ")");
  s.sizes.clear();
  for (std::size_t i = 0; i < sizes.size(); ++i)
    s.sizes.push_back(static_cast<std::size_t>(integer_value(
        sizes[i], f.path("sizes") + "[" + std::to_string(i) + "]", 1, static_cast<int64_t>(kMaxLayerWidth))));
  const Fields bits = f.object("bits");
  s.bits.weight = static_cast<int>(bits.integer("weight", 2, 8));
  s.bits.act = static_cast<int>(bits.integer("act", 2, 8));
  s.bits.grad = static_cast<int>(bits.integer("grad", 2, 8));
  s.input_bits = static_cast<int>(f.integer("input_bits", 2, 8));
  s.groups = static_cast<int>(f.integer("groups", 0, 8));
  try {
    s.validate();
  } catch (const UsageError& e) {
    throw std::runtime_error((f.where().empty() ? std::string("the model") : f.where()) +
                             " is not a valid model: " + e.what());
  }
  return s;
}

nlohmann::json norm_to_json(const data::PixelNorm& n) {
  return {{"mean", n.mean},
          {"stddev", n.stddev},
          {"exponent", n.exponent},
          {"table", std::vector<int>(n.table.begin(), n.table.end())}};
}

data::PixelNorm norm_from_json(const Fields& f) {
  // Pixels are in [0, 1]: so is their mean, and their standard deviation is at most 1/2.
  const double mean = f.number("mean", 0.0, 1.0);
  const double stddev = f.number("stddev", 1e-9, 1.0);
  const data::PixelNorm n = data::make_pixel_norm(mean, stddev);
  const int64_t e = f.integer("exponent", -64, 64);
  if (e != n.exponent)
    throw std::runtime_error(f.path("exponent") + " is " + std::to_string(e) + " but the statistics give " +
                             std::to_string(n.exponent));
  const nlohmann::json& table = f.array("table");
  if (table.size() != 256)
    throw std::runtime_error(f.path("table") + " must have 256 entries (found " + std::to_string(table.size()) + ")");
  for (std::size_t i = 0; i < 256; ++i) {
    const std::string p = f.path("table") + "[" + std::to_string(i) + "]";
    if (integer_value(table[i], p, -128, 127) != n.table[i])
      throw std::runtime_error(p + " is " + table[i].dump() + " but the statistics give " +
                               std::to_string(n.table[i]));
  }
  return n;
}

}  // namespace qtrain::json_io
