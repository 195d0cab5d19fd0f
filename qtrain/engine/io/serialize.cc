#include "qtrain/engine/io/serialize.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "qtrain/engine/io/binary_io.h"
#include "qtrain/engine/io/json_io.h"
#include "qtrain/engine/io/policy_json.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {
constexpr char kMagic[8] = {'Q', 'T', 'R', 'N', 'M', 'D', 'L', '1'};
constexpr uint32_t kVersion = 1;
constexpr std::size_t kMaxFileBytes = std::size_t{1} << 31;
constexpr int kMaxExponent = 200;

using binary_io::put;
using binary_io::Reader;

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
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write '" + path + "': " + std::strerror(err));
  }
  if (::close(fd) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write '" + path + "': " + std::strerror(err));
  }
  // The rename is durable only once the directory entry is on disk too.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    // Some file systems cannot fsync a directory (EINVAL); the data itself is already on disk then.
    if (rc != 0 && err != EINVAL && err != EROFS)
      throw std::runtime_error("cannot write '" + path + "': fsync of its directory: " + std::strerror(err));
  }
}

void save_model(const std::string& path, Model& model, const data::PixelNorm& norm, const QuantPolicy* policy) {
  nlohmann::json header;
  header["model"] = json_io::spec_to_json(model.spec());
  header["pixel_norm"] = json_io::norm_to_json(norm);
  if (policy != nullptr) header["policy"] = json_io::policy_json(*policy);
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
    binary_io::put_i32_values(out, p->master);
  }
  binary_io::put_buffers(out, model);
  put<uint32_t>(out, binary_io::crc32_of(out.data(), out.size()));
  write_file_atomic(path, out);
}

LoadedModel load_model(const std::string& path) {
  return parse_model(path, binary_io::read_file_bounded(path, "model file", kMaxFileBytes));
}

LoadedModel parse_model(const std::string& path, const std::string& bytes) {
  Reader r(path, bytes);
  if (bytes.size() < sizeof(kMagic) || r.take(sizeof(kMagic), "magic") != std::string(kMagic, sizeof(kMagic)))
    throw InputError(path + ": byte 0: not a qtrain model file (bad magic)");
  const uint32_t version = r.get<uint32_t>("version");
  if (version != kVersion)
    throw InputError(path + ": byte 8: model file version " + std::to_string(version) + ", this build reads version " +
                     std::to_string(kVersion));
  const uint32_t hlen = r.get<uint32_t>("header length");
  const std::size_t hpos = r.pos();
  const std::string htext = r.take(hlen, "header");
  LoadedModel out;
  ModelSpec spec;
  nlohmann::json listed;
  try {
    const nlohmann::json h = nlohmann::json::parse(htext);
    const json_io::Fields root(h, "");
    spec = json_io::spec_from_json(root.object("model"));
    out.norm = json_io::norm_from_json(root.object("pixel_norm"));
    listed = root.array("params");
    if (h.contains("policy")) out.policy = json_io::policy_from_json(h.at("policy"), "policy");
    binary_io::check_size_bound(spec, bytes.size());
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(path + ": byte " + std::to_string(hpos) + ": the header is not valid JSON (" + e.what() + ")");
  } catch (const std::exception& e) {
    throw InputError(path + ": byte " + std::to_string(hpos) + ": bad model header: " + e.what());
  }
  out.model = build_model(spec, 0);
  const std::vector<Param*> params = out.model->params();
  try {
    if (listed.size() != params.size())
      throw std::runtime_error("params lists " + std::to_string(listed.size()) + " parameters, the model has " +
                               std::to_string(params.size()));
    for (std::size_t i = 0; i < params.size(); ++i) {
      const json_io::Fields p(listed[i], "params[" + std::to_string(i) + "]");
      const std::string name = p.string("name");
      const auto rows = p.integer("rows", 0, INT64_MAX), cols = p.integer("cols", 0, INT64_MAX);
      const Tensor& m = params[i]->master;
      if (name != params[i]->name || static_cast<std::size_t>(rows) != m.rows() ||
          static_cast<std::size_t>(cols) != m.cols())
        throw std::runtime_error("params[" + std::to_string(i) + "] is " + name + " " + std::to_string(rows) + "x" +
                                 std::to_string(cols) + ", the model has " + params[i]->name + " " +
                                 std::to_string(m.rows()) + "x" + std::to_string(m.cols()));
    }
    if (out.policy) {
      check_policy(*out.policy, out.model->named_layers(), "policy");
      out.policy->source = path;
    }
  } catch (const std::exception& e) {
    throw InputError(path + ": byte " + std::to_string(hpos) + ": bad model header: " + e.what());
  }
  // The bytes the model needs must be exactly the bytes the file holds.
  const uint64_t need = binary_io::param_bytes(*out.model) + binary_io::buffer_bytes(*out.model) + 4;
  const uint64_t have = bytes.size() - r.pos();
  if (have < need)
    r.fail("the model needs " + std::to_string(need) + " bytes of parameters, statistics and checksum, the file " +
           "holds " + std::to_string(have) + " (truncated)");
  if (have > need)
    r.fail("the model needs " + std::to_string(need) + " bytes of parameters, statistics and checksum, the file " +
           "holds " + std::to_string(have) + " (" + std::to_string(have - need) + " unexpected bytes after the checksum)");
  const std::size_t crc_pos = bytes.size() - 4;
  uint32_t stored;
  std::memcpy(&stored, bytes.data() + crc_pos, 4);
  if (stored != binary_io::crc32_of(bytes.data(), crc_pos))
    throw InputError(path + ": byte " + std::to_string(crc_pos) + ": checksum mismatch (the file is corrupt)");
  for (Param* p : params) {
    const std::size_t at = r.pos();
    const int32_t e = r.get<int32_t>("parameter exponent");
    if (e < -kMaxExponent || e > kMaxExponent)
      throw InputError(path + ": byte " + std::to_string(at) + ": parameter " + p->name + " exponent " +
                       std::to_string(e) + " is out of range " + std::to_string(-kMaxExponent) + ".." +
                       std::to_string(kMaxExponent));
    r.read_i32_values(p->master, "parameter " + p->name);
    p->master.set_exponent(e);
  }
  binary_io::read_buffers(r, *out.model);
  return out;
}

}  // namespace qtrain
