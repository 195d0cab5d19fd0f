// A tensor of the integer data plane: a dense row-major array of int8 or int32 values and the power-of-two
// exponents that give them meaning (value = q·2^e). One exponent for the whole tensor, or one per row (a weight
// matrix with per-output-channel scales, a weight gradient with ShiftQuant group shifts), or one per column
// (a layer output whose weights had per-output-channel scales).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

enum class DType : uint8_t { kI8 = 1, kI32 = 4 };
enum class ScaleAxis : uint8_t { kTensor = 0, kRow = 1, kCol = 2 };

inline std::size_t dtype_size(DType t) { return static_cast<std::size_t>(t); }
const char* dtype_name(DType t);

// 64-byte aligned storage (one cache line; the widest vector load). Large buffers (≥ 64 KiB) are recycled: a freed
// one waits in a small process-wide cache (at most 128 MiB) for the next request of the same size. A training step
// allocates the same tensor sizes every step, and a fresh large allocation is a new mapping whose every page the
// kernel faults in and zeroes on first touch — for an `uninitialized` tensor as much work as the pass that fills
// it. Recycled buffers hold stale data: only zero-filled buffers are promised zeros.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Zero-filled unless `zero` is false (for storage the caller overwrites completely).
  explicit AlignedBuffer(std::size_t bytes, bool zero = true);
  AlignedBuffer(const AlignedBuffer& other);  // deep copy
  AlignedBuffer& operator=(const AlignedBuffer& other);
  AlignedBuffer(AlignedBuffer&&) noexcept = default;
  AlignedBuffer& operator=(AlignedBuffer&&) noexcept = default;
  std::byte* data() { return ptr_.get(); }
  const std::byte* data() const { return ptr_.get(); }
  std::size_t bytes() const { return bytes_; }

 private:
  struct Free {
    Free() noexcept : capacity(0) {}
    explicit Free(std::size_t c) noexcept : capacity(c) {}
    void operator()(std::byte* p) const;
    std::size_t capacity;  // the allocation's rounded size
  };
  std::unique_ptr<std::byte, Free> ptr_;
  std::size_t bytes_ = 0;
};

// A process-unique number naming one state of a tensor's values and exponents: every construction, copy, move and
// assignment draws a fresh one, and so does every access that may change the tensor (see Tensor::generation).
class Generation {
 public:
  Generation() noexcept : value_(next()) {}
  Generation(const Generation&) noexcept : value_(next()) {}
  Generation& operator=(const Generation&) noexcept {
    value_ = next();
    return *this;
  }
  void renew() noexcept { value_ = next(); }
  uint64_t value() const noexcept { return value_; }

 private:
  static uint64_t next() noexcept;
  uint64_t value_;
};

class Tensor {
 public:
  Tensor() = default;
  // A zero-filled rows×cols tensor with a single exponent.
  Tensor(std::size_t rows, std::size_t cols, DType dtype, int exponent = 0);
  // The same without zero-filling, for outputs that a kernel overwrites completely (a GEMM result).
  static Tensor uninitialized(std::size_t rows, std::size_t cols, DType dtype, int exponent = 0);

  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t size() const { return rows_ * cols_; }
  DType dtype() const { return dtype_; }
  bool empty() const { return size() == 0; }

  template <typename T>
  T* data();
  template <typename T>
  const T* data() const;

  ScaleAxis axis() const { return axis_; }
  const std::vector<int>& exponents() const { return exps_; }
  // Exponent of element (r, c).
  int exponent_at(std::size_t r, std::size_t c) const {
    return axis_ == ScaleAxis::kTensor ? exps_[0] : axis_ == ScaleAxis::kRow ? exps_[r] : exps_[c];
  }
  int exponent() const;  // single exponent; throws if the tensor has several
  void set_exponent(int e);
  void set_exponents(ScaleAxis axis, std::vector<int> exps);

  // A fact a producer knows for free (a ReLU computes it on the way): every integer is ≥ 0 and the largest is m.
  // Consumers (the activation quantizer) then skip a max-|x| pass. Exact or absent; any mutable data<T>() access
  // clears it.
  void set_nonnegative_max(uint64_t m) { nonnegative_max_ = m; }
  std::optional<uint64_t> nonnegative_max() const { return nonnegative_max_; }

  // The same bytes seen as rows×cols (rows·cols must equal size()); only for a single exponent, which is kept.
  void reshape(std::size_t rows, std::size_t cols);

  // Changes whenever the tensor may have changed: a mutable data<T>() access, set_exponent(s), reshape, an
  // assignment (and differs between any two tensors alive at once). Equal generations mean equal contents, so a
  // consumer can cache what it derives from a tensor (the quantized weights of a parameter's master). Writes
  // through a pointer taken before the last generation was read are not seen: take the pointer, write, then read.
  uint64_t generation() const { return generation_.value(); }

  // The real value of element i (control plane: tests, metrics, export).
  double value(std::size_t i) const;
  std::vector<double> to_double() const;
  std::string describe() const;  // "i32[64×256] e=per-col" — for error messages

 private:
  std::size_t rows_ = 0, cols_ = 0;
  DType dtype_ = DType::kI32;
  ScaleAxis axis_ = ScaleAxis::kTensor;
  std::vector<int> exps_{0};
  AlignedBuffer buf_;
  std::optional<uint64_t> nonnegative_max_;
  Generation generation_;
};

}  // namespace qtrain
