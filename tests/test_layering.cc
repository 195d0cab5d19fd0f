// The architecture, checked rather than hoped for: dependencies point one way (tools → nas → engine → quant →
// kernels, and inside engine/ core, data → ops, optim → layers → models → train → io → run), no installed header
// includes an internal one, and the umbrella header <qtrain/qtrain.h> includes every installed header.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
const fs::path kRoot = QTRAIN_SOURCE_DIR;

// The headers a part keeps to itself (not installed): QTRAIN_ENGINE_PRIVATE_HEADERS in qtrain/engine/CMakeLists.txt
// and QTRAIN_KERNELS_PRIVATE_HEADERS in qtrain/kernels/CMakeLists.txt (the test reads the lists from the CMake
// files, so the two cannot drift). Names may hold digits, '-' (Highway's -inl.h idiom) and folders.
std::set<std::string> private_headers_of(const std::string& part, const std::string& list_name) {
  std::ifstream in(kRoot / "qtrain" / part / "CMakeLists.txt");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::smatch m;
  std::regex_search(text, m, std::regex("set\\(" + list_name + R"(([\s\S]*?)CACHE INTERNAL)"));
  std::set<std::string> out;
  if (m.empty()) return out;
  const std::string list = m[1].str();
  const std::regex word(R"([a-z0-9_/-]+\.h)");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), word); it != std::sregex_iterator(); ++it)
    out.insert("qtrain/" + part + "/" + it->str());
  return out;
}

std::set<std::string> private_headers() {
  std::set<std::string> out = private_headers_of("engine", "QTRAIN_ENGINE_PRIVATE_HEADERS");
  const std::set<std::string> kernels = private_headers_of("kernels", "QTRAIN_KERNELS_PRIVATE_HEADERS");
  out.insert(kernels.begin(), kernels.end());
  return out;
}

// Rank of a library path "qtrain/<part>/…": a file may include files of its own part or of a lower rank.
// Inside the engine the folders are ranked too.
struct Part {
  std::string name;
  int rank;
};
Part part_of(const std::string& rel) {
  static const std::map<std::string, int> top{{"kernels", 0}, {"quant", 1}, {"engine", 2}, {"nas", 3}};
  static const std::map<std::string, int> engine{{"core", 0},   {"data", 0},  {"ops", 1}, {"optim", 1}, {"layers", 2},
                                                 {"models", 3}, {"train", 4}, {"io", 5},  {"run", 6}};
  const fs::path p(rel);
  auto it = p.begin();
  if (it == p.end() || *it != "qtrain") return {"", -1};
  ++it;
  if (it == p.end()) return {"", -1};
  const std::string t = it->string();
  if (t == "qtrain.h") return {"umbrella", 100};
  const auto found = top.find(t);
  if (found == top.end()) return {"qtrain/" + t, -1};
  if (t != "engine") return {t, found->second * 10};
  ++it;
  const std::string sub = it == p.end() ? "" : it->string();
  const auto e = engine.find(sub);
  if (e == engine.end()) return {"engine/" + sub, -1};
  return {"engine/" + sub, 20 + e->second};
}

std::vector<std::string> includes_of(const fs::path& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  const std::regex inc(R"(^\s*#\s*include\s*["<](qtrain/[^">]+)[">])");
  std::string line;
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, inc)) out.push_back(m[1].str());
  return out;
}

std::vector<std::string> library_files() {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(kRoot / "qtrain")) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".h" || ext == ".cc")) out.push_back(fs::relative(e.path(), kRoot).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Layering, EveryLibraryFileIsInAKnownPart) {
  for (const std::string& f : library_files()) {
    const Part p = part_of(f);
    EXPECT_GE(p.rank, 0) << f << " is in '" << p.name
                         << "', which the layering does not know: add it to part_of in tests/test_layering.cc";
  }
}

TEST(Layering, NoUpwardInclude) {
  std::size_t checked = 0;
  for (const std::string& f : library_files()) {
    const Part from = part_of(f);
    for (const std::string& inc : includes_of(kRoot / f)) {
      const Part to = part_of(inc);
      ++checked;
      EXPECT_TRUE(to.name == from.name || to.rank < from.rank)
          << f << " (" << from.name << ") includes " << inc << " (" << to.name
          << "): dependencies point tools → nas → engine → quant → kernels, and inside engine core, data → ops, "
             "optim → layers → models → train → io";
      EXPECT_TRUE(fs::exists(kRoot / inc)) << f << " includes " << inc << ", which does not exist";
    }
  }
  EXPECT_GT(checked, 100u);  // the scan found the sources
}

TEST(Layering, ToolsAndTestsDoNotReachIntoEachOther) {
  // The CLI goes through the library only: no include of another tool, bench or test file.
  for (const auto& e : fs::recursive_directory_iterator(kRoot / "tools")) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path());
    std::string line;
    while (std::getline(in, line))
      EXPECT_EQ(line.find("#include \"tests/"), std::string::npos) << e.path() << ": " << line;
  }
}

TEST(Layering, InstalledHeadersIncludeNoInternalOne) {
  ASSERT_FALSE(private_headers_of("engine", "QTRAIN_ENGINE_PRIVATE_HEADERS").empty())
      << "QTRAIN_ENGINE_PRIVATE_HEADERS not found in qtrain/engine/CMakeLists.txt";
  ASSERT_FALSE(private_headers_of("kernels", "QTRAIN_KERNELS_PRIVATE_HEADERS").empty())
      << "QTRAIN_KERNELS_PRIVATE_HEADERS not found in qtrain/kernels/CMakeLists.txt";
  const std::set<std::string> priv = private_headers();
  for (const std::string& p : priv) EXPECT_TRUE(fs::exists(kRoot / p)) << p << " is listed as private but missing";
  for (const std::string& f : library_files()) {
    if (fs::path(f).extension() != ".h" || priv.count(f)) continue;
    for (const std::string& inc : includes_of(kRoot / f))
      EXPECT_EQ(priv.count(inc), 0u) << f << " is installed but includes the internal header " << inc;
  }
}

TEST(Layering, UmbrellaHeaderIncludesEveryInstalledHeader) {
  const std::set<std::string> priv = private_headers();
  std::set<std::string> listed;
  for (const std::string& inc : includes_of(kRoot / "qtrain/qtrain.h")) listed.insert(inc);
  for (const std::string& f : library_files()) {
    if (fs::path(f).extension() != ".h" || f == "qtrain/qtrain.h") continue;
    if (priv.count(f)) {
      EXPECT_EQ(listed.count(f), 0u) << "qtrain/qtrain.h includes the internal header " << f;
    } else {
      EXPECT_EQ(listed.count(f), 1u) << "qtrain/qtrain.h does not include the installed header " << f;
    }
  }
}

}  // namespace
