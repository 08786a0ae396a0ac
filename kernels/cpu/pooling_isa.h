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
  void fm_backward(int threads, kernels::DType dtype, const void* grad, const void* table,      \
                   const kernels::IndexArgs& ix, int num_sets, int dim, void* grad_emb);        \
  void fwfm_forward(int threads, kernels::DType dtype, const void* table,                       \
                    const kernels::IndexArgs& ix, int num_sets, int dim, const void* q_upper,   \
                    void* out);                                                                 \
  /* grad_weight is reduced over `chunks` fixed ranges of samples, in order. */                 \
  void fwfm_backward(int threads, kernels::DType dtype, const void* grad, const void* table,    \
                     const kernels::IndexArgs& ix, int num_sets, int dim, const void* q_full,   \
                     void* grad_emb, long long chunks, void* grad_weight);                      \
  }                                                                                             \
  }                                                                                             \
  }

FASTME_CPU_POOLING_DECLARE(generic)
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_X86 1
FASTME_CPU_POOLING_DECLARE(avx2)
FASTME_CPU_POOLING_DECLARE(avx512)
#endif
