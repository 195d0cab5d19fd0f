// int4 packing (see int4.h). The GEMMs with int4 operands live in gemm.cc, next to the packing routines that
// unpack the nibbles.
#include "qtrain/kernels/int4.h"

namespace qtrain::kernels {

void pack_int4(const int8_t* src, std::size_t rows, std::size_t cols, uint8_t* dst) {
  const std::size_t pairs = cols / 2, rb = int4_row_bytes(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const int8_t* in = src + r * cols;
    uint8_t* out = dst + r * rb;
    for (std::size_t i = 0; i < pairs; ++i) {  // a plain loop the compiler vectorizes
      out[i] = static_cast<uint8_t>((static_cast<uint8_t>(in[2 * i]) & 0x0F) |
                                    ((static_cast<uint8_t>(in[2 * i + 1]) & 0x0F) << 4));
    }
    if (cols % 2 != 0) out[pairs] = static_cast<uint8_t>(in[cols - 1]) & 0x0F;
  }
}

void unpack_int4(const uint8_t* src, std::size_t rows, std::size_t cols, int8_t* dst) {
  const std::size_t pairs = cols / 2, rb = int4_row_bytes(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const uint8_t* in = src + r * rb;
    int8_t* out = dst + r * cols;
    for (std::size_t i = 0; i < pairs; ++i) {
      // Shifting the nibble to the top of the byte and back (arithmetic shift) sign-extends it.
      out[2 * i] = static_cast<int8_t>(static_cast<int8_t>(in[i] << 4) >> 4);
      out[2 * i + 1] = static_cast<int8_t>(static_cast<int8_t>(in[i]) >> 4);
    }
    if (cols % 2 != 0) out[cols - 1] = static_cast<int8_t>(static_cast<int8_t>(in[pairs] << 4) >> 4);
  }
}

namespace ref {

void pack_int4(const int8_t* src, std::size_t rows, std::size_t cols, uint8_t* dst) {
  const std::size_t rb = int4_row_bytes(cols);
  for (std::size_t i = 0; i < rows * rb; ++i) dst[i] = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      const unsigned nibble = static_cast<unsigned>(src[r * cols + c]) & 0xFu;  // two's complement, 4 bits
      dst[r * rb + c / 2] = static_cast<uint8_t>(dst[r * rb + c / 2] | (c % 2 == 0 ? nibble : nibble << 4));
    }
  }
}

void unpack_int4(const uint8_t* src, std::size_t rows, std::size_t cols, int8_t* dst) {
  const std::size_t rb = int4_row_bytes(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      const unsigned byte = src[r * rb + c / 2];
      const int nibble = static_cast<int>(c % 2 == 0 ? byte & 0xFu : byte >> 4);
      dst[r * cols + c] = static_cast<int8_t>(nibble >= 8 ? nibble - 16 : nibble);
    }
  }
}

}  // namespace ref
}  // namespace qtrain::kernels
