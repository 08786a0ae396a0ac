#pragma once
// The dropout loop, one copy per ISA (kernels/cpu/dropout_kernels.h, compiled by
// dropout_<isa>.cpp); kernels/cpu/dropout.cpp picks one per call. Arguments as in
// kernels/cpu/dropout.h.
#include "types.h"

#define FASTME_CPU_DROPOUT_DECLARE(isa)                                                        \
  namespace fastme {                                                                           \
  namespace cpu {                                                                              \
  namespace isa {                                                                              \
  void dropout(int threads, kernels::DType dtype, const void* x, void* out, long long n,       \
               unsigned long long seed, unsigned int threshold, double scale);                 \
  }                                                                                            \
  }                                                                                            \
  }

FASTME_CPU_DROPOUT_DECLARE(generic)
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#ifndef FASTME_CPU_X86
#define FASTME_CPU_X86 1
#endif
FASTME_CPU_DROPOUT_DECLARE(avx2)
FASTME_CPU_DROPOUT_DECLARE(avx512)
#endif
