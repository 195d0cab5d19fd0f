#include "qtrain/engine/io/named_tensors.h"

#include <cstring>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

namespace qtrain::named_tensors {

namespace {
constexpr int kMaxExponent = 200;
constexpr std::size_t kMaxEntries = std::size_t{1} << 20, kMaxNameBytes = 4096;
constexpr int64_t kMaxSide = int64_t{1} << 31;
constexpr uint64_t kCap = uint64_t{1} << 62;

// 4·(rows·cols + extra) bytes, saturating at kCap: rows and cols are at most 2^31 (from_json), so rows·cols ≤ 2^62
// and rows·cols + extra (extra ≤ cols) cannot wrap.
uint64_t words_bytes(uint64_t rows, uint64_t cols, uint64_t extra) {
  const uint64_t words = rows * cols + extra;
  return words > kCap / 4 ? kCap : 4 * words;
}

// a + b for a, b ≤ kCap, saturating at kCap.
uint64_t add_capped(uint64_t a, uint64_t b) { return a > kCap - b ? kCap : a + b; }

std::string shape(std::size_t rows, std::size_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }
}  // namespace

Named params_of(Model& model) {
  Named out;
  for (Param* p : model.params()) out.emplace_back(p->name, &p->master);
  return out;
}

Named buffers_of(Model& model) { return model.named_buffers(); }

std::vector<Entry> entries_of(const Named& named) {
  std::vector<Entry> out;
  for (const auto& [name, t] : named) out.push_back({name, t->rows(), t->cols()});
  return out;
}

nlohmann::json to_json(const Named& named, bool dtype) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [name, t] : named) {
    nlohmann::json e = {{"name", name}, {"rows", t->rows()}, {"cols", t->cols()}};
    if (dtype) e["dtype"] = "i32";
    list.push_back(std::move(e));
  }
  return list;
}

std::vector<Entry> from_json(const nlohmann::json& list, const std::string& path, bool dtype) {
  if (list.size() > kMaxEntries)
    throw std::runtime_error(path + " lists " + std::to_string(list.size()) + " tensors (at most " +
                             std::to_string(kMaxEntries) + ")");
  std::vector<Entry> out;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const json_io::Fields e(list[i], path + "[" + std::to_string(i) + "]");
    Entry entry;
    entry.name = e.string("name");
    if (entry.name.empty() || entry.name.size() > kMaxNameBytes)
      throw std::runtime_error(e.path("name") + " must be 1.." + std::to_string(kMaxNameBytes) + " bytes");
    entry.rows = static_cast<std::size_t>(e.integer("rows", 0, kMaxSide));
    entry.cols = static_cast<std::size_t>(e.integer("cols", 0, kMaxSide));
    if (dtype && e.string("dtype") != "i32") throw std::runtime_error(e.path("dtype") + " must be \"i32\"");
    out.push_back(std::move(entry));
  }
  return out;
}

uint64_t param_bytes(const std::vector<Entry>& listed) {
  uint64_t n = 0;
  for (const Entry& e : listed) n = add_capped(n, words_bytes(e.rows, e.cols, 1));
  return n;
}

uint64_t buffer_bytes(const std::vector<Entry>& listed) {
  uint64_t n = 0;
  for (const Entry& e : listed) n = add_capped(n, words_bytes(e.rows, e.cols, e.cols));
  return n;
}

std::vector<std::size_t> bind(const std::vector<Entry>& listed, const Named& model, const std::string& path,
                              const char* kind) {
  std::unordered_map<std::string, std::size_t> by_name;
  for (std::size_t i = 0; i < model.size(); ++i) by_name.emplace(model[i].first, i);
  std::unordered_set<std::string> seen;
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < listed.size(); ++i) {
    const Entry& e = listed[i];
    const std::string where = path + "[" + std::to_string(i) + "] '" + e.name + "'";
    const auto it = by_name.find(e.name);
    if (it == by_name.end()) throw std::runtime_error(where + ": the model has no " + kind + " of that name");
    if (!seen.insert(e.name).second) throw std::runtime_error(where + ": listed twice");
    const Tensor& t = *model[it->second].second;
    if (e.rows != t.rows() || e.cols != t.cols())
      throw std::runtime_error(where + " is " + shape(e.rows, e.cols) + ", the model's " + kind + " is " +
                               shape(t.rows(), t.cols()));
    out.push_back(it->second);
  }
  for (const auto& [name, t] : model)
    if (seen.count(name) == 0)
      throw std::runtime_error(path + ": the model's " + kind + " '" + name + "' is missing (" +
                               std::to_string(listed.size()) + " listed, the model has " +
                               std::to_string(model.size()) + ")");
  return out;
}

std::vector<Tensor*> tensors_at(const Named& named, const std::vector<std::size_t>& at) {
  std::vector<Tensor*> out;
  for (std::size_t i : at) out.push_back(named[i].second);
  return out;
}

void put_params(std::string& out, const Named& params) {
  for (const auto& [name, t] : params) {
    binary_io::put<int32_t>(out, t->exponent());
    binary_io::put_i32_values(out, *t);
  }
}

void read_params(binary_io::Reader& r, const std::vector<Tensor*>& tensors, const std::vector<Entry>& listed) {
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::size_t at = r.pos();
    const int32_t e = r.get<int32_t>("parameter exponent");
    if (e < -kMaxExponent || e > kMaxExponent)
      r.fail_at(at, "parameter " + listed[i].name + " exponent " + std::to_string(e) + " is out of range " +
                        std::to_string(-kMaxExponent) + ".." + std::to_string(kMaxExponent));
    r.read_i32_values(*tensors[i], "parameter " + listed[i].name);
    tensors[i]->set_exponent(e);
  }
}

void put_buffers(std::string& out, const Named& buffers) {
  for (const auto& [name, t] : buffers) {
    for (std::size_t c = 0; c < t->cols(); ++c) binary_io::put<int32_t>(out, t->exponent_at(0, c));
    binary_io::put_i32_values(out, *t);
  }
}

void read_buffers(binary_io::Reader& r, const std::vector<Tensor*>& tensors) {
  for (Tensor* t : tensors) {
    std::vector<int> exps(t->cols());
    for (int& e : exps) {
      const std::size_t at = r.pos();
      e = r.get<int32_t>("running-statistics exponent");
      if (e < -kMaxExponent || e > kMaxExponent)
        r.fail_at(at, "running-statistics exponent " + std::to_string(e) + " is out of range " +
                          std::to_string(-kMaxExponent) + ".." + std::to_string(kMaxExponent));
    }
    const std::string data = r.take(t->size() * sizeof(int32_t), "running statistics");
    std::memcpy(t->data<int32_t>(), data.data(), data.size());
    t->set_exponents(t->cols() == 1 ? ScaleAxis::kTensor : ScaleAxis::kCol, std::move(exps));
  }
}

}  // namespace qtrain::named_tensors
