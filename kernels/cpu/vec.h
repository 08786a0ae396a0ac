// Vector primitives of one ISA: which one is decided by the compiler flags of the translation unit
// that includes this file (kernels/cpu/<op>_<isa>.cpp), whose FASTME_CPU_ISA_NS names the
// namespace they live in (kernels/cpu/isa.h says why each ISA has its own). Every primitive adds
// or copies element by element, so every ISA gives the same bits.
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef FASTME_CPU_ISA_NS
#error "define FASTME_CPU_ISA_NS before including vec.h"
#endif

namespace fastme {
namespace cpu {
namespace FASTME_CPU_ISA_NS {
namespace {

// dst[0:n) = src[0:n) for a short run of n bytes (one row of one set: K elements).
inline void copy_bytes(char* dst, const char* src, long long n) {
#if defined(__AVX2__)
  // 32 to 64 bytes (K=10 float32 is 40): two overlapping 32-byte moves, 1.4x faster in the
  // lookup than one masked 64-byte move (which often crosses a cache line).
  if (n >= 32 && n <= 64) {
    const __m256i head = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i tail = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + n - 32));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), head);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + n - 32), tail);
    return;
  }
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (; n >= 64; n -= 64, dst += 64, src += 64)
    _mm512_storeu_si512(dst, _mm512_loadu_si512(src));
  if (n > 0) {  // one masked move: masked-off bytes are neither read nor written
    const __mmask64 mask = (__mmask64{1} << n) - 1;
    _mm512_mask_storeu_epi8(dst, mask, _mm512_maskz_loadu_epi8(mask, src));
  }
#else
#if defined(__AVX2__)
  for (; n >= 32; n -= 32, dst += 32, src += 32)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
#endif
  // Fixed-size memcpy compiles to single moves (no libc call).
  for (; n >= 16; n -= 16, dst += 16, src += 16) std::memcpy(dst, src, 16);
  if (n >= 8) std::memcpy(dst, src, 8), n -= 8, dst += 8, src += 8;
  if (n >= 4) std::memcpy(dst, src, 4), n -= 4, dst += 4, src += 4;
  if (n >= 2) std::memcpy(dst, src, 2), n -= 2, dst += 2, src += 2;
  if (n >= 1) *dst = *src;
#endif
}

// dst[0:n) = src[0:n) rounded to bfloat16 as torch rounds (nearest even, NaN kept quiet:
// kernels/cpu/half.h), n float32 elements.
inline void float_run_to_bf16(std::uint16_t* dst, const float* src, long long n) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
  const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  for (; n > 0; n -= 16, dst += 16, src += 16) {
    const __mmask16 mask =
        n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
    const __m512i u = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(half, lsb)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
    const __m512i bits =
        _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(_mm512_srli_epi32(u, 16), quiet));
    _mm256_mask_storeu_epi16(dst, mask, _mm512_cvtepi32_epi16(bits));
  }
#else
  for (long long j = 0; j < n; ++j) {
    std::uint32_t u;
    std::memcpy(&u, src + j, 4);
    dst[j] = (u & 0x7fffffffu) > 0x7f800000u
                 ? static_cast<std::uint16_t>((u >> 16) | 0x40)
                 : static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
#endif
}

// dst[0:n) += src[0:n).
inline void add_run(float* dst, const float* src, long long n) {
#if defined(__AVX512F__)
  for (; n >= 16; n -= 16, dst += 16, src += 16)
    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), _mm512_loadu_ps(src)));
  if (n > 0) {
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), _mm512_maskz_loadu_ps(mask, src));
    _mm512_mask_storeu_ps(dst, mask, sum);
  }
#else
#if defined(__AVX2__)
  for (; n >= 8; n -= 8, dst += 8, src += 8)
    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), _mm256_loadu_ps(src)));
#endif
  for (long long j = 0; j < n; ++j) dst[j] += src[j];
#endif
}

inline void add_run(double* dst, const double* src, long long n) {
#if defined(__AVX512F__)
  for (; n >= 8; n -= 8, dst += 8, src += 8)
    _mm512_storeu_pd(dst, _mm512_add_pd(_mm512_loadu_pd(dst), _mm512_loadu_pd(src)));
  if (n > 0) {
    const __mmask8 mask = static_cast<__mmask8>((1u << n) - 1);
    const __m512d sum = _mm512_add_pd(_mm512_maskz_loadu_pd(mask, dst), _mm512_maskz_loadu_pd(mask, src));
    _mm512_mask_storeu_pd(dst, mask, sum);
  }
#else
#if defined(__AVX2__)
  for (; n >= 4; n -= 4, dst += 4, src += 4)
    _mm256_storeu_pd(dst, _mm256_add_pd(_mm256_loadu_pd(dst), _mm256_loadu_pd(src)));
#endif
  for (long long j = 0; j < n; ++j) dst[j] += src[j];
#endif
}

// Arithmetic vectors of one register's width (GCC/Clang vector extensions: one instruction per
// operation where the ISA has the width, several otherwise), and the register tile of the small
// matrix products (kernels/cpu/pooling_kernels.h): kTileRows x kTileVecs accumulators, plus
// kTileVecs operands and a broadcast, fit in the ISA's vector registers.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kTileRows = 6, kTileVecs = 4;  // 24 + 4 + 1 of 32 registers
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
constexpr int kTileRows = 5, kTileVecs = 2;  // 10 + 2 + 1 of 16 registers
#else
constexpr int kVecBytes = 16;
constexpr int kTileRows = 5, kTileVecs = 2;
#endif
typedef float VecF __attribute__((vector_size(kVecBytes)));
typedef double VecD __attribute__((vector_size(kVecBytes)));

template <typename A>
struct Vec;
template <>
struct Vec<float> {
  using type = VecF;
};
template <>
struct Vec<double> {
  using type = VecD;
};

template <typename V, typename A>
inline V load_vec(const A* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename A>
inline void store_vec(A* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

}  // namespace
}  // namespace FASTME_CPU_ISA_NS
}  // namespace cpu
}  // namespace fastme
