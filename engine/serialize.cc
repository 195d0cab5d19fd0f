#include "engine/serialize.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "quant/error.h"

namespace qtrain {

namespace {
constexpr char kMagic[8] = {'Q', 'T', 'R', 'N', 'M', 'D', 'L', '1'};
constexpr uint32_t kVersion = 1;
constexpr std::size_t kMaxFileBytes = std::size_t{1} << 31;

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the formats are little-endian; so is every machine qtrain targets
  out.append(b, sizeof(T));
}

class Reader {
 public:
  Reader(const std::string& path, const std::string& bytes) : path_(path), bytes_(bytes) {}
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string take(std::size_t n, const char* what) {
    need(n, what);
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  [[noreturn]] void fail(const std::string& msg) const {
    throw InputError(path_ + ": byte " + std::to_string(pos_) + ": " + msg);
  }
  std::size_t pos() const { return pos_; }

 private:
  void need(std::size_t n, const char* what) const {
    if (bytes_.size() - pos_ < n)
      fail(std::string("file ends inside the ") + what + " (truncated: " + std::to_string(bytes_.size()) +
           " bytes in all)");
  }
  const std::string& path_;
  const std::string& bytes_;
  std::size_t pos_ = 0;
};

nlohmann::json spec_to_json(const ModelSpec& s) {
  nlohmann::json j = {{"kind", s.kind},
                      {"sizes", s.sizes},
                      {"bits", {{"weight", s.bits.weight}, {"act", s.bits.act}, {"grad", s.bits.grad}}},
                      {"input_bits", s.input_bits},
                      {"groups", s.groups}};
  if (s.convolutional()) {  // MLP files stay exactly as they were
    j["input"] = {s.in_h, s.in_w, s.in_c};
    j["classes"] = s.classes;
    j["edge_bits"] = s.edge_bits;
    j["norm"] = s.norm;
  }
  return j;
}

// One channel: scalars and one table (the original single-channel form, kept so those files do not change);
// several: an array entry per channel for mean, stddev and table.
nlohmann::json norm_to_json(const data::PixelNorm& n) {
  nlohmann::json mean = nlohmann::json::array(), stddev = nlohmann::json::array(), table = nlohmann::json::array();
  for (const data::ChannelNorm& c : n.channels) {
    mean.push_back(c.mean);
    stddev.push_back(c.stddev);
    table.push_back(std::vector<int>(c.table.begin(), c.table.end()));
  }
  if (n.channels.size() == 1)
    return {{"mean", mean[0]}, {"stddev", stddev[0]}, {"exponent", n.exponent}, {"table", table[0]}};
  return {{"mean", mean}, {"stddev", stddev}, {"exponent", n.exponent}, {"table", table}};
}

// Reads either form of norm_to_json.
data::PixelNorm norm_from_json(const nlohmann::json& j) {
  const bool single = !j.at("mean").is_array();
  const auto per_channel = [&](const char* key) { return single ? nlohmann::json::array({j.at(key)}) : j.at(key); };
  const auto mean = per_channel("mean").get<std::vector<double>>();
  const auto stddev = per_channel("stddev").get<std::vector<double>>();
  const auto tables = per_channel("table").get<std::vector<std::vector<int>>>();
  if (mean.empty() || stddev.size() != mean.size() || tables.size() != mean.size())
    throw std::runtime_error("pixel_norm needs one mean, stddev and table per channel");
  data::PixelNorm n;
  n.exponent = j.at("exponent").get<int>();
  n.channels.resize(mean.size());
  for (std::size_t c = 0; c < mean.size(); ++c) {
    if (tables[c].size() != 256) throw std::runtime_error("pixel_norm.table must have 256 entries");
    n.channels[c].mean = mean[c];
    n.channels[c].stddev = stddev[c];
    for (std::size_t i = 0; i < 256; ++i) n.channels[c].table[i] = static_cast<int8_t>(tables[c][i]);
  }
  return n;
}

ModelSpec spec_from_json(const nlohmann::json& j) {
  ModelSpec s;
  s.kind = j.at("kind").get<std::string>();
  s.sizes = j.at("sizes").get<std::vector<std::size_t>>();
  s.bits.weight = j.at("bits").at("weight").get<int>();
  s.bits.act = j.at("bits").at("act").get<int>();
  s.bits.grad = j.at("bits").at("grad").get<int>();
  s.input_bits = j.at("input_bits").get<int>();
  s.groups = j.at("groups").get<int>();
  if (j.contains("input")) {
    const auto in = j.at("input").get<std::vector<std::size_t>>();
    if (in.size() != 3) throw std::runtime_error("model.input must be [height, width, channels]");
    s.in_h = in[0];
    s.in_w = in[1];
    s.in_c = in[2];
    s.classes = j.at("classes").get<std::size_t>();
    s.edge_bits = j.at("edge_bits").get<int>();
    s.norm = j.at("norm").get<std::string>();
  }
  return s;
}
}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write '" + path + "': " + std::strerror(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw std::runtime_error("cannot write '" + path + "': " + std::strerror(err));
    }
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write '" + path + "': " + std::strerror(err));
  }
}

void save_model(const std::string& path, Model& model, const data::PixelNorm& norm) {
  nlohmann::json header;
  header["model"] = spec_to_json(model.spec());
  header["pixel_norm"] = norm_to_json(norm);
  nlohmann::json params = nlohmann::json::array();
  for (Param* p : model.params())
    params.push_back({{"name", p->name}, {"rows", p->master.rows()}, {"cols", p->master.cols()}});
  header["params"] = params;
  const std::string h = header.dump();

  std::string out(kMagic, sizeof(kMagic));
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, static_cast<uint32_t>(h.size()));
  out += h;
  for (Param* p : model.params()) {
    put<int32_t>(out, p->master.exponent());
    out.append(reinterpret_cast<const char*>(p->master.data<int32_t>()), p->master.size() * sizeof(int32_t));
  }
  // Buffers (running statistics): their exponents (one per column), then the int32 data. Shapes follow the spec.
  for (Tensor* t : model.buffers()) {
    for (std::size_t c = 0; c < t->cols(); ++c) put<int32_t>(out, t->exponent_at(0, c));
    out.append(reinterpret_cast<const char*>(t->data<int32_t>()), t->size() * sizeof(int32_t));
  }
  put<uint32_t>(out, static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(out.data()),
                                                 static_cast<uInt>(out.size()))));
  write_file_atomic(path, out);
}

LoadedModel load_model(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(path + ": is a directory, not a model file");
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw InputError(path + ": cannot open model file: " + std::strerror(errno));
  const auto size = static_cast<std::size_t>(f.tellg());
  if (size > kMaxFileBytes) throw InputError(path + ": " + std::to_string(size) + " bytes is too large for a model file");
  std::string bytes(size, '\0');
  f.seekg(0);
  f.read(bytes.data(), static_cast<std::streamsize>(size));
  Reader r(path, bytes);
  if (r.take(sizeof(kMagic), "magic") != std::string(kMagic, sizeof(kMagic)))
    throw InputError(path + ": byte 0: not a qtrain model file (bad magic)");
  const uint32_t version = r.get<uint32_t>("version");
  if (version != kVersion)
    throw InputError(path + ": byte 8: model file version " + std::to_string(version) + ", this build reads version " +
                     std::to_string(kVersion));
  const uint32_t hlen = r.get<uint32_t>("header length");
  const std::size_t hpos = r.pos();
  const std::string htext = r.take(hlen, "header");
  LoadedModel out;
  std::vector<std::pair<std::size_t, std::size_t>> shapes;
  try {
    const nlohmann::json h = nlohmann::json::parse(htext);
    const ModelSpec spec = spec_from_json(h.at("model"));
    spec.validate();
    out.norm = norm_from_json(h.at("pixel_norm"));
    for (const auto& p : h.at("params")) shapes.emplace_back(p.at("rows").get<std::size_t>(), p.at("cols").get<std::size_t>());
    out.model = build_model(spec, 0);
  } catch (const InputError&) {
    throw;
  } catch (const std::exception& e) {
    throw InputError(path + ": byte " + std::to_string(hpos) + ": bad model header: " + e.what());
  }
  const std::vector<Param*> params = out.model->params();
  if (shapes.size() != params.size())
    throw InputError(path + ": byte " + std::to_string(hpos) + ": header lists " + std::to_string(shapes.size()) +
                     " parameters, the model has " + std::to_string(params.size()));
  for (std::size_t i = 0; i < params.size(); ++i) {
    Param* p = params[i];
    if (shapes[i].first != p->master.rows() || shapes[i].second != p->master.cols())
      r.fail("parameter " + p->name + " has shape " + std::to_string(shapes[i].first) + "x" +
             std::to_string(shapes[i].second) + ", the model expects " + std::to_string(p->master.rows()) + "x" +
             std::to_string(p->master.cols()));
    const int32_t e = r.get<int32_t>("parameter exponent");
    if (e < -200 || e > 200) r.fail("parameter " + p->name + " exponent " + std::to_string(e) + " is out of range");
    const std::string data = r.take(p->master.size() * sizeof(int32_t), "parameter data");
    std::memcpy(p->master.data<int32_t>(), data.data(), data.size());
    p->master.set_exponent(e);
    p->momentum = Tensor(p->master.rows(), p->master.cols(), DType::kI32, e);
    ++p->version;
  }
  for (Tensor* t : out.model->buffers()) {
    std::vector<int> exps(t->cols());
    for (int& e : exps) {
      e = r.get<int32_t>("running-statistics exponent");
      if (e < -200 || e > 200) r.fail("running-statistics exponent " + std::to_string(e) + " is out of range");
    }
    const std::string data = r.take(t->size() * sizeof(int32_t), "running statistics");
    std::memcpy(t->data<int32_t>(), data.data(), data.size());
    t->set_exponents(t->cols() == 1 ? ScaleAxis::kTensor : ScaleAxis::kCol, std::move(exps));
  }
  const std::size_t crc_pos = r.pos();
  const uint32_t stored = r.get<uint32_t>("checksum");
  const auto actual = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(crc_pos)));
  if (stored != actual) throw InputError(path + ": byte " + std::to_string(crc_pos) + ": checksum mismatch (the file is corrupt)");
  if (r.pos() != bytes.size())
    r.fail(std::to_string(bytes.size() - r.pos()) + " unexpected bytes after the checksum");
  return out;
}

}  // namespace qtrain
