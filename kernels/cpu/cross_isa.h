#pragma once
// The elementwise passes of the CPU cross network, one copy per ISA (kernels/cpu/cross_kernels.h,
// compiled by cross_<isa>.cpp); kernels/cpu/cross.cpp picks one per call. Arguments as in
// kernels/cpu/cross.h; `chunk` is the number of samples per range of the bias gradient's sums.
#include "types.h"

#define FASTME_CPU_CROSS_DECLARE(isa)                                                          \
  namespace fastme {                                                                            \
  namespace cpu {                                                                               \
  namespace isa {                                                                               \
  void cross_layer_forward(int threads, kernels::DType dtype, long long M, long long B,         \
                           long long D, const void* x0, long long x0_sm, long long x0_sb,       \
                           const void* z, const void* x, long long x_sm, long long x_sb,        \
                           const void* bias, void* out, long long out_sm, long long out_sb);    \
  void cross_layer_backward(int threads, kernels::DType dtype, long long M, long long B,        \
                            long long D, long long chunk, const void* g, long long g_sm,        \
                            long long g_sb, const void* h, void* g_out, const void* x0,         \
                            long long x0_sm, long long x0_sb, const void* z, const void* bias,  \
                            void* u, void* dx0_acc, bool accumulate, void* grad_bias);          \
  void cross_grad_x0(int threads, kernels::DType dtype, long long M, long long B, long long D,  \
                     const void* dx0_acc, const void* g, long long g_sm, long long g_sb,        \
                     const void* h, void* grad_x0, long long gx_sm, long long gx_sb);           \
  void set_relu_mean(int threads, kernels::DType dtype, long long M, long long B, long long D, \
                     const void* const* z, const void* bias, void* out);                        \
  }                                                                                             \
  }                                                                                             \
  }

FASTME_CPU_CROSS_DECLARE(generic)
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_X86 1
FASTME_CPU_CROSS_DECLARE(avx2)
FASTME_CPU_CROSS_DECLARE(avx512)
#endif
