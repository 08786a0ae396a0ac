#pragma once
// The inner loops of the CPU lookup, one copy per ISA (kernels/cpu/lookup_kernels.h, compiled by
// lookup_<isa>.cpp); kernels/cpu/lookup.cpp picks one per call.
#include <cstdint>

#include "types.h"

#define FASTME_CPU_LOOKUP_DECLARE(isa)                                                       \
  namespace fastme {                                                                          \
  namespace cpu {                                                                             \
  namespace isa {                                                                             \
  /* out[b, m, i, :] = table[row(b, i), m, :]; elements of elem_size bytes. */                \
  void gather(int threads, int elem_size, const void* table, const kernels::IndexArgs& ix,     \
              int num_sets, int dim, void* out);                                              \
  /* gather from a float32 table into bfloat16 rows (rounded to nearest even). */             \
  void gather_to_bf16(int threads, const float* table, const kernels::IndexArgs& ix,           \
                      int num_sets, int dim, std::uint16_t* out);                             \
  /* grad[rows[p]] += src of pair p (p = b * N + i), in ascending p for each row; grad is */   \
  /* zero-filled first. Rows are split into `buckets` ranges [bounds[q], bounds[q + 1]). */    \
  void scatter(int threads, const float* src, const long long* rows, const long long* bounds, \
               int buckets, const kernels::IndexArgs& ix, int num_sets, int dim, float* grad); \
  void scatter(int threads, const double* src, const long long* rows,                         \
               const long long* bounds, int buckets, const kernels::IndexArgs& ix,            \
               int num_sets, int dim, double* grad);                                          \
  }                                                                                           \
  }                                                                                           \
  }

FASTME_CPU_LOOKUP_DECLARE(generic)
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_X86 1
FASTME_CPU_LOOKUP_DECLARE(avx2)
FASTME_CPU_LOOKUP_DECLARE(avx512)
#endif
