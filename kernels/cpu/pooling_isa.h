#pragma once
// The inner loops of the CPU FM / FwFM pooled lookup, one copy per ISA
// (kernels/cpu/pooling_kernels.h, compiled by pooling_<isa>.cpp); kernels/cpu/pooling.cpp picks
// one per call. Arguments as in kernels/cpu/pooling.h.
#include "types.h"

#define FASTME_CPU_POOLING_DECLARE(isa)                                                        \
  namespace fastme {                                                                            \
  namespace cpu {                                                                               \
  namespace isa {                                                                               \
  void fm_forward(int threads, kernels::DType dtype, const void* table,                         \
                  const kernels::IndexArgs& ix, int num_sets, int dim, void* out);              \
  /* The backwards add the gradient of every gathered row into grad_table [R, M, K] (in the */ \
  /* accumulation type; they zero-fill it first): pair rows `rows`, threads owning the row */   \
  /* ranges [bounds[q], bounds[q + 1]) of kernels/cpu/row_split.h. Samples are taken in */      \
  /* `chunks` fixed ranges; FwFM's grad_weight is reduced over them in order. */                \
  void fm_backward(int threads, kernels::DType dtype, const void* grad, const void* table,      \
                   const kernels::IndexArgs& ix, int num_sets, int dim, const long long* rows,  \
                   const long long* bounds, int buckets, long long chunks, void* grad_table);   \
  void fwfm_forward(int threads, kernels::DType dtype, const void* table,                       \
                    const kernels::IndexArgs& ix, int num_sets, int dim, const void* q_upper,   \
                    void* out);                                                                 \
  void fwfm_backward(int threads, kernels::DType dtype, const void* grad, const void* table,    \
                     const kernels::IndexArgs& ix, int num_sets, int dim, const void* q_full,   \
                     const long long* rows, const long long* bounds, int buckets,               \
                     long long chunks, void* grad_table, void* grad_weight);                    \
  }                                                                                             \
  }                                                                                             \
  }

FASTME_CPU_POOLING_DECLARE(generic)
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_X86 1
FASTME_CPU_POOLING_DECLARE(avx2)
FASTME_CPU_POOLING_DECLARE(avx512)
#endif
