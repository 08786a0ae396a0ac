// The dropout loop for the ISA of the including translation unit (kernels/cpu/dropout_<isa>.cpp
// defines FASTME_CPU_ISA_NS and is compiled with that ISA's flags; the compiler vectorises the
// hash and the multiply for it).
#include <cstdint>

#include "dropout_isa.h"
#include "half.h"

namespace fastme {
namespace cpu {
namespace FASTME_CPU_ISA_NS {
namespace {

// A 32-bit integer mixer (xorshift-multiply, constants from C. Wellons' hash-prospector
// "lowbias32"): a bijection whose output bits each depend on every input bit.
inline std::uint32_t mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The mask bits of element i: two keyed rounds of the mixer (fastme/ops/reference.py repeats
// them in torch integer ops).
inline std::uint32_t dropout_bits(std::uint32_t k0, std::uint32_t k1, long long i) {
  const std::uint32_t lo = static_cast<std::uint32_t>(i);
  const std::uint32_t hi = static_cast<std::uint32_t>(static_cast<unsigned long long>(i) >> 32);
  return mix32(mix32(lo ^ k0) + (k1 ^ hi));
}

// Elements per OpenMP chunk: long enough for the vector loop, short enough to balance.
constexpr long long kChunk = 4096;

template <typename T, typename A, typename Load, typename Store>
void run(int threads, const T* x, T* out, long long n, unsigned long long seed,
         std::uint32_t threshold, A scale, Load load, Store store) {
  const std::uint32_t k0 = static_cast<std::uint32_t>(seed);
  const std::uint32_t k1 = static_cast<std::uint32_t>(seed >> 32);
  const long long chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long c = 0; c < chunks; ++c) {
    const long long first = c * kChunk;
    const long long last = first + kChunk < n ? first + kChunk : n;
#pragma omp simd
    for (long long i = first; i < last; ++i) {
      const A s = dropout_bits(k0, k1, i) >= threshold ? scale : A(0);
      out[i] = store(load(x[i]) * s);
    }
  }
}

}  // namespace

void dropout(int threads, kernels::DType dtype, const void* x, void* out, long long n,
             unsigned long long seed, unsigned int threshold, double scale) {
  using kernels::DType;
  const auto same = [](auto v) { return v; };
  if (dtype == DType::kFloat64) {
    run(threads, static_cast<const double*>(x), static_cast<double*>(out), n, seed, threshold,
        scale, same, same);
    return;
  }
  const float s = static_cast<float>(scale);
  if (dtype == DType::kFloat32) {
    run(threads, static_cast<const float*>(x), static_cast<float*>(out), n, seed, threshold, s,
        same, same);
  } else if (dtype == DType::kBFloat16) {
    run(threads, static_cast<const std::uint16_t*>(x), static_cast<std::uint16_t*>(out), n, seed,
        threshold, s, [](std::uint16_t v) { return bf16_to_float(v); },
        [](float v) { return float_to_bf16(v); });
  } else {
    run(threads, static_cast<const std::uint16_t*>(x), static_cast<std::uint16_t*>(out), n, seed,
        threshold, s, [](std::uint16_t v) { return fp16_to_float(v); },
        [](float v) { return float_to_fp16(v); });
  }
}

}  // namespace FASTME_CPU_ISA_NS
}  // namespace cpu
}  // namespace fastme
