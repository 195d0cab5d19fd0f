#include "qtrain/engine/core/tensor.h"

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

namespace qtrain {

const char* dtype_name(DType t) { return t == DType::kI8 ? "i8" : "i32"; }

namespace {
// Freed large buffers by rounded size, for reuse (see tensor.h). Never destroyed: tensors may outlive static
// destruction order.
class BufferCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t{64} << 10;
  static constexpr std::size_t kMaxCached = std::size_t{128} << 20;

  static BufferCache& get() {
    static BufferCache* cache = new BufferCache;
    return *cache;
  }
  // A cached buffer of exactly `capacity` bytes, or null.
  void* take(std::size_t capacity) {
    const std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t i = free_.size(); i-- > 0;) {
      if (free_[i].first != capacity) continue;
      void* p = free_[i].second;
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
      cached_ -= capacity;
      return p;
    }
    return nullptr;
  }
  // Keeps p for reuse when there is room, else frees it.
  void give(void* p, std::size_t capacity) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + capacity <= kMaxCached) {
        free_.emplace_back(capacity, p);
        cached_ += capacity;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<std::size_t, void*>> free_;
  std::size_t cached_ = 0;
};
}  // namespace

AlignedBuffer::AlignedBuffer(std::size_t bytes, bool zero) : bytes_(bytes) {
  if (bytes == 0) return;
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  void* p = rounded >= BufferCache::kMinBytes ? BufferCache::get().take(rounded) : nullptr;
  if (p == nullptr) p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  if (zero) std::memset(p, 0, rounded);
  ptr_ = std::unique_ptr<std::byte, Free>(static_cast<std::byte*>(p), Free{rounded});
}

AlignedBuffer::AlignedBuffer(const AlignedBuffer& other) : AlignedBuffer(other.bytes_, /*zero=*/false) {
  if (bytes_) std::memcpy(data(), other.data(), bytes_);
}

AlignedBuffer& AlignedBuffer::operator=(const AlignedBuffer& other) {
  if (this != &other) *this = AlignedBuffer(other);
  return *this;
}

void AlignedBuffer::Free::operator()(std::byte* p) const {
  if (capacity >= BufferCache::kMinBytes) {
    BufferCache::get().give(p, capacity);
  } else {
    std::free(p);
  }
}

uint64_t Generation::next() noexcept {
  static std::atomic<uint64_t> counter{0};
  return counter.fetch_add(1, std::memory_order_relaxed) + 1;  // 0 is never a generation
}

Tensor::Tensor(std::size_t rows, std::size_t cols, DType dtype, int exponent)
    : rows_(rows), cols_(cols), dtype_(dtype), exps_{exponent}, buf_(rows * cols * dtype_size(dtype)) {}

Tensor Tensor::uninitialized(std::size_t rows, std::size_t cols, DType dtype, int exponent) {
  Tensor t;
  t.rows_ = rows;
  t.cols_ = cols;
  t.dtype_ = dtype;
  t.exps_ = {exponent};
  t.buf_ = AlignedBuffer(rows * cols * dtype_size(dtype), /*zero=*/false);
  return t;
}

template <>
int8_t* Tensor::data<int8_t>() {
  if (dtype_ != DType::kI8) throw std::logic_error("Tensor::data<int8_t> on " + describe());
  nonnegative_max_.reset();  // the caller may write
  generation_.renew();
  return reinterpret_cast<int8_t*>(buf_.data());
}
template <>
const int8_t* Tensor::data<int8_t>() const {
  if (dtype_ != DType::kI8) throw std::logic_error("Tensor::data<int8_t> on " + describe());
  return reinterpret_cast<const int8_t*>(buf_.data());
}
template <>
int32_t* Tensor::data<int32_t>() {
  if (dtype_ != DType::kI32) throw std::logic_error("Tensor::data<int32_t> on " + describe());
  nonnegative_max_.reset();  // the caller may write
  generation_.renew();
  return reinterpret_cast<int32_t*>(buf_.data());
}
template <>
const int32_t* Tensor::data<int32_t>() const {
  if (dtype_ != DType::kI32) throw std::logic_error("Tensor::data<int32_t> on " + describe());
  return reinterpret_cast<const int32_t*>(buf_.data());
}

int Tensor::exponent() const {
  if (axis_ != ScaleAxis::kTensor) throw std::logic_error("Tensor::exponent on per-row/column " + describe());
  return exps_[0];
}

void Tensor::set_exponent(int e) {
  generation_.renew();
  axis_ = ScaleAxis::kTensor;
  exps_.assign(1, e);
}

void Tensor::set_exponents(ScaleAxis axis, std::vector<int> exps) {
  const std::size_t want = axis == ScaleAxis::kTensor ? 1 : axis == ScaleAxis::kRow ? rows_ : cols_;
  if (exps.size() != want)
    throw std::logic_error("Tensor::set_exponents: " + std::to_string(exps.size()) + " exponents for " + describe());
  generation_.renew();
  axis_ = axis;
  exps_ = std::move(exps);
}

void Tensor::reshape(std::size_t rows, std::size_t cols) {
  if (rows * cols != size() || axis_ != ScaleAxis::kTensor)
    throw std::logic_error("Tensor::reshape of " + describe() + " to " + std::to_string(rows) + "x" +
                           std::to_string(cols));
  generation_.renew();
  rows_ = rows;
  cols_ = cols;
}

double Tensor::value(std::size_t i) const {
  const std::size_t r = i / cols_, c = i % cols_;
  const double q = dtype_ == DType::kI8 ? data<int8_t>()[i] : data<int32_t>()[i];
  return std::ldexp(q, exponent_at(r, c));
}

std::vector<double> Tensor::to_double() const {
  std::vector<double> out(size());
  for (std::size_t i = 0; i < size(); ++i) out[i] = value(i);
  return out;
}

std::string Tensor::describe() const {
  const char* ax = axis_ == ScaleAxis::kTensor ? "" : axis_ == ScaleAxis::kRow ? " per-row" : " per-col";
  return std::string(dtype_name(dtype_)) + "[" + std::to_string(rows_) + "x" + std::to_string(cols_) + "]" + ax;
}

}  // namespace qtrain
