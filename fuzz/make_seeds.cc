// Writes the seed corpora of the fuzz targets (tests/fuzz_corpus/<target>/): small valid files of every format
// and a few typical corruptions. Run once after a format change:  build/fuzz/make_seeds tests/fuzz_corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "fuzz/fuzz_models.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/train/trainer.h"

namespace {
namespace fs = std::filesystem;
using qtrain::fuzz::put_be32;

void write(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string images(uint32_t count, uint32_t rows, uint32_t cols, std::size_t pixels) {
  std::string s;
  put_be32(s, 0x00000803);
  put_be32(s, count);
  put_be32(s, rows);
  put_be32(s, cols);
  for (std::size_t i = 0; i < pixels; ++i) s.push_back(static_cast<char>(i * 53 + 7));
  return s;
}

std::string gz(const std::string& s) { return qtrain::fuzz::gzip(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const fs::path dir(argv[1]);
  // IDX images.
  const std::string img = images(3, 2, 2, 12);
  write(dir / "idx_images/valid", img);
  write(dir / "idx_images/valid.gz", gz(img));
  write(dir / "idx_images/truncated", img.substr(0, 20));
  write(dir / "idx_images/truncated.gz", gz(img).substr(0, 25));
  write(dir / "idx_images/huge_dims", images(0xFFFFFFFF, 0xFFFF, 0xFFFF, 4));
  write(dir / "idx_images/labels_magic", qtrain::fuzz::idx_labels(3));
  write(dir / "idx_gzip/valid", img);
  write(dir / "idx_gzip/labels", qtrain::fuzz::idx_labels(3));
  // IDX labels.
  const std::string lab = qtrain::fuzz::idx_labels(5);
  write(dir / "idx_labels/valid", lab);
  write(dir / "idx_labels/valid.gz", gz(lab));
  std::string bad_label = lab;
  bad_label[10] = 10;
  write(dir / "idx_labels/label_out_of_range", bad_label);
  write(dir / "idx_labels/trailing", lab + "x");

  // CIFAR-10 batches: one and two records, a cut record, a bad label.
  std::string rec(3073, '\0');
  rec[0] = 3;
  for (std::size_t i = 1; i < rec.size(); ++i) rec[i] = static_cast<char>(i * 31);
  write(dir / "cifar10/one_record", rec);
  std::string two = rec + rec;
  two[3073] = 9;
  write(dir / "cifar10/two_records", two);
  write(dir / "cifar10/cut_record", rec.substr(0, 1000));
  std::string bad = rec;
  bad[0] = 10;
  write(dir / "cifar10/bad_label", bad);

  // A tiny model (4-3-10) on 8 synthetic 2×2 images, and checkpoints of it mid-epoch and at an epoch's end. These
  // are checkpoint format version 3 and model file version 2. The older formats this build reads but no longer
  // writes are kept, not regenerated: checkpoint/v1_* are the same checkpoints in format version 1, written by this
  // program at 3f2aa51 (the last commit before format 2); checkpoint/v2_* in format 2 and model/v1_tiny in model
  // file version 1, written at 94da668 (the last commit before the registry).
  qtrain::data::ImageSet set;
  set.count = 8;
  set.rows = set.cols = 2;
  for (int i = 0; i < 32; ++i) set.pixels.push_back(static_cast<uint8_t>(i * 29));
  for (int i = 0; i < 8; ++i) set.labels.push_back(static_cast<uint8_t>(i % 10));
  qtrain::TrainConfig cfg;
  cfg.model.sizes = {4, 3, 10};
  cfg.model.bits = {4, 4, 4};
  cfg.batch = 4;
  cfg.epochs = 2;
  qtrain::Trainer t(cfg, set);
  write(dir / "checkpoint/start", qtrain::encode_checkpoint(t));
  t.train_epoch(1, nullptr, [&](const qtrain::Progress& p) {
    if (p.step == 1) write(dir / "checkpoint/mid_epoch", qtrain::encode_checkpoint(t));
  });
  write(dir / "checkpoint/epoch_end", qtrain::encode_checkpoint(t));
  const fs::path tmp = fs::temp_directory_path() / "qtrain_make_seeds.qtm";
  qtrain::save_model(tmp.string(), t.model(), t.norm());
  std::ifstream in(tmp, std::ios::binary);
  write(dir / "model/tiny", std::string((std::istreambuf_iterator<char>(in)), {}));
  in.close();

  // The registered user model of the fuzz targets (fuzz_models.h) on the same images: a model file and a
  // mid-epoch checkpoint (with running statistics in BUFS).
  qtrain::fuzz::register_user_model();
  qtrain::ModelConfig user;
  user.set("width", 3).set("bits", 4);
  qtrain::TrainConfig ucfg = cfg;
  ucfg.model = qtrain::ModelSpec::from_config(qtrain::fuzz::kUserModel, user, {2, 2, 1}, 10);
  qtrain::Trainer u(ucfg, set);
  u.train_epoch(1, nullptr, [&](const qtrain::Progress& p) {
    if (p.step == 1) write(dir / "checkpoint/user_mid_epoch", qtrain::encode_checkpoint(u));
  });
  qtrain::save_model(tmp.string(), u.model(), u.norm());
  std::ifstream uin(tmp, std::ios::binary);
  write(dir / "model/user_conv", std::string((std::istreambuf_iterator<char>(uin)), {}));
  fs::remove(tmp);
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}
