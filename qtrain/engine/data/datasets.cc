#include "qtrain/engine/data/datasets.h"

#include "qtrain/engine/data/cifar.h"
#include "qtrain/quant/error.h"

namespace qtrain::data {

const std::vector<DatasetInfo>& datasets() {
  static const std::vector<DatasetInfo> known = {
      {"fashion-mnist", kDefaultFashionMnistDir, "IDX"},
      {"mnist", "", "IDX"},
      {"cifar10", "", "CIFAR-10 binary"},
  };
  return known;
}

namespace {
const DatasetInfo& find_dataset(const std::string& name) {
  for (const DatasetInfo& d : datasets())
    if (d.name == name) return d;
  std::string list;
  for (const DatasetInfo& d : datasets()) list += (list.empty() ? "" : ", ") + d.name;
  throw UsageError("--dataset '" + name + "' is unknown; valid data sets: " + list);
}
}  // namespace

void check_dataset_name(const std::string& name) { find_dataset(name); }

ImageSet load_dataset(const std::string& name, const std::string& dir, Split split, std::size_t limit) {
  const DatasetInfo& info = find_dataset(name);
  const std::string from = dir.empty() ? info.default_dir : dir;
  if (from.empty() && info.name == "cifar10")
    throw UsageError(
        "--dataset cifar10 needs --data DIR: CIFAR-10 is not packaged in Debian; download the binary "
        "version (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz), extract it and pass its "
        "directory");
  if (from.empty())
    throw UsageError("--dataset " + info.name + " needs --data DIR (a directory with the MNIST IDX files)");
  ImageSet set = info.format == "IDX" ? load_mnist_dir(from, split) : load_cifar10_dir(from, split);
  return limit && limit < set.count ? take_first(set, limit) : set;
}

}  // namespace qtrain::data
