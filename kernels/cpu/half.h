#pragma once
// 16-bit floats <-> float32, as torch rounds (round to nearest even, NaN kept quiet). In an
// anonymous namespace: each translation unit keeps its own copy (kernels/cpu/isa.h).
#include <cstdint>
#include <cstring>

#include "types.h"

namespace fastme {
namespace cpu {
namespace {

inline float bf16_to_float(std::uint16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, 4);
  return f;
}

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as torch does
  return static_cast<std::uint16_t>(u >> 16);
}

inline float fp16_to_float(std::uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

inline std::uint16_t float_to_fp16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  std::uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

// The 16-bit dtypes (kBFloat16, kFloat16) by their code.
inline float to_float(std::uint16_t bits, kernels::DType dtype) {
  return dtype == kernels::DType::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

inline std::uint16_t from_float(float f, kernels::DType dtype) {
  return dtype == kernels::DType::kBFloat16 ? float_to_bf16(f) : float_to_fp16(f);
}

}  // namespace
}  // namespace cpu
}  // namespace fastme
