// IDX parsing through zlib: the input is gzip-compressed, then read as an images file and as a labels file, so
// the fuzzer explores the IDX structure behind a valid gzip stream (corrupt streams reach fuzz_idx_images through
// its .gz seeds).
#include "qtrain/engine/data/idx.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static qtrain::fuzz::MemFile gz("gz"), images("images"), labels("labels");
  gz.set(qtrain::fuzz::gzip(data, size));
  const uint32_t count = size >= 8 ? qtrain::fuzz::be32(data + 4) : 1;
  const uint32_t n = count >= 1 && count <= 4096 ? count : 1;
  images.set(qtrain::fuzz::idx_images(n));
  labels.set(qtrain::fuzz::idx_labels(n));
  try {
    qtrain::data::read_idx(gz.path(), labels.path());
  } catch (const qtrain::InputError&) {
  }
  try {
    qtrain::data::read_idx(images.path(), gz.path());
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
