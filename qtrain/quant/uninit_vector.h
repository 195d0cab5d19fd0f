// A std::vector whose resize() leaves new elements uninitialized (default-initialized) instead of zero-filling
// them: for buffers of the data plane that a pass overwrites completely right after sizing them (a zero-fill of a
// megabyte tensor costs as much as the pass itself). Elements are trivial integers; value-initialization is still
// available (assign(n, 0), resize(n, 0)).
#pragma once

#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace qtrain {

template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  static_assert(std::is_trivially_default_constructible_v<T>);
  using std::allocator<T>::allocator;
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  // construct() without arguments default-initializes (no zeroing); with arguments it constructs as usual.
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using UninitVector = std::vector<T, DefaultInitAllocator<T>>;

}  // namespace qtrain
