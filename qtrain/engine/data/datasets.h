// The data sets qtrain knows by name, where they live by default, and one call to read a split of one.
//   fashion-mnist  IDX files; default directory kDefaultFashionMnistDir (Debian package dataset-fashion-mnist)
//   mnist          IDX files; no default directory (not packaged)
//   cifar10        the binary version; no default directory (not packaged in Debian)
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "qtrain/engine/data/idx.h"

namespace qtrain::data {

struct DatasetInfo {
  std::string name;
  std::string default_dir;  // empty: the user must give the directory
  std::string format;       // "IDX" or "CIFAR-10 binary"
};

// The known data sets, in the order help texts list them.
const std::vector<DatasetInfo>& datasets();

// Throws UsageError "--dataset 'x' is unknown; valid data sets: …" unless `name` is one of datasets().
void check_dataset_name(const std::string& name);

// Reads `split` of the named data set from `dir` (empty: its default directory; a UsageError saying where to get
// it when there is none) and keeps the first `limit` examples (0 = all). Problems with the files are InputErrors
// naming the file (idx.h, cifar.h).
ImageSet load_dataset(const std::string& name, const std::string& dir, Split split, std::size_t limit);

}  // namespace qtrain::data
