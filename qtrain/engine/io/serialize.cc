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
#include "qtrain/engine/io/named_tensors.h"
#include "qtrain/engine/io/policy_json.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {
constexpr char kMagic[8] = {'Q', 'T', 'R', 'N', 'M', 'D', 'L', '1'};
// The version written. Version 1 (before the registry) recorded a built-in's spec and no buffer list; it is read.
constexpr uint32_t kVersion = 2;
constexpr std::size_t kMaxFileBytes = std::size_t{1} << 31;

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
  const named_tensors::Named params = named_tensors::params_of(model), buffers = named_tensors::buffers_of(model);
  nlohmann::json header;
  header["model"] = json_io::model_to_json(model.spec());
  header["pixel_norm"] = json_io::norm_to_json(norm);
  header["params"] = named_tensors::to_json(params, false);
  header["buffers"] = named_tensors::to_json(buffers, false);
  if (policy != nullptr) header["policy"] = json_io::policy_json(*policy);
  const std::string h = header.dump();

  std::string out(kMagic, sizeof(kMagic));
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, static_cast<uint32_t>(h.size()));
  out += h;
  named_tensors::put_params(out, params);
  named_tensors::put_buffers(out, buffers);
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
  if (version != 1 && version != kVersion)
    throw InputError(path + ": byte 8: model file version " + std::to_string(version) +
                     ", this build reads versions 1 and " + std::to_string(kVersion));
  const uint32_t hlen = r.get<uint32_t>("header length");
  const std::size_t hpos = r.pos();
  const std::string htext = r.take(hlen, "header");
  auto bad_header = [&](const std::string& what) {
    throw InputError(path + ": byte " + std::to_string(hpos) + ": bad model header: " + what);
  };
  LoadedModel out;
  ModelSpec spec;
  std::vector<named_tensors::Entry> listed_params, listed_buffers;
  try {
    const nlohmann::json h = nlohmann::json::parse(htext);
    const json_io::Fields root(h, "");
    // Version 1 recorded a built-in's spec, and its buffers in the model's order without a list.
    spec =
        version == 1 ? json_io::spec_from_json(root.object("model")) : json_io::model_from_json(root.object("model"));
    out.norm = json_io::norm_from_json(root.object("pixel_norm"));
    listed_params = named_tensors::from_json(root.array("params"), "params", false);
    if (version != 1) listed_buffers = named_tensors::from_json(root.array("buffers"), "buffers", false);
    if (h.contains("policy")) out.policy = json_io::policy_from_json(h.at("policy"), "policy");
    binary_io::check_size_bound(spec, bytes.size());
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(path + ": byte " + std::to_string(hpos) + ": the header is not valid JSON (" + e.what() + ")");
  } catch (const std::exception& e) {
    bad_header(e.what());
  }
  // The listed tensors must be in the file before the model is built (a registered model has no size bound).
  const uint64_t have = bytes.size() - r.pos();
  const uint64_t listed = named_tensors::param_bytes(listed_params) + named_tensors::buffer_bytes(listed_buffers) + 4;
  if (listed > have)
    r.fail("the header lists " + std::to_string(listed) + " bytes of parameters, statistics and checksum, the " +
           "file holds " + std::to_string(have) + " (truncated)");
  try {
    out.model = build_model(spec, 0);
    if (out.policy) {
      check_policy(*out.policy, out.model->named_layers(), "policy");
      out.policy->source = path;
    }
  } catch (const std::exception& e) {
    bad_header("model '" + spec.kind + "' cannot be built from the file's configuration: " + e.what());
  }
  if (version == 1) listed_buffers = named_tensors::entries_of(named_tensors::buffers_of(*out.model));
  std::vector<Tensor*> params, buffers;
  try {
    const named_tensors::Named p = named_tensors::params_of(*out.model), b = named_tensors::buffers_of(*out.model);
    params = named_tensors::tensors_at(p, named_tensors::bind(listed_params, p, "params", "parameter"));
    buffers = named_tensors::tensors_at(b, named_tensors::bind(listed_buffers, b, "buffers", "buffer"));
  } catch (const std::exception& e) {
    bad_header(e.what());
  }
  // The bytes the model needs must be exactly the bytes the file holds.
  const uint64_t need = named_tensors::param_bytes(listed_params) + named_tensors::buffer_bytes(listed_buffers) + 4;
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
  named_tensors::read_params(r, params, listed_params);
  named_tensors::read_buffers(r, buffers);
  return out;
}

}  // namespace qtrain
