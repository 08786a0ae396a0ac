#pragma once
// The inner loops of the fused table optimizers, one copy per ISA (kernels/cpu/table_optim_kernels.h,
// compiled by table_optim_<isa>.cpp); kernels/cpu/table_optim.cpp picks one per call.

namespace fastme {
namespace cpu {

// Everything a step needs but the typed pointers (kernels/cpu/table_optim.h).
struct OptimStep {
  int kind;
  long long num_rows, num_sets, dim, pairs;
  const long long* rows;
  const long long* bounds;  // [buckets + 1] row ranges, one thread each
  int buckets;
  int* slots;  // [num_rows] row -> slot of its thread, -1 outside a step
  double lr, weight_decay, eps, beta1, beta2, bias1, bias2_sqrt;
};

}  // namespace cpu
}  // namespace fastme

#define FASTME_CPU_TABLE_OPTIM_DECLARE(isa)                                                  \
  namespace fastme {                                                                          \
  namespace cpu {                                                                             \
  namespace isa {                                                                             \
  void table_optim_step(int threads, const OptimStep& s, float* table, const float* grad,     \
                        float* state0, float* state1);                                        \
  void table_optim_step(int threads, const OptimStep& s, double* table, const double* grad,   \
                        double* state0, double* state1);                                      \
  }                                                                                           \
  }                                                                                           \
  }

FASTME_CPU_TABLE_OPTIM_DECLARE(generic)
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#ifndef FASTME_CPU_X86
#define FASTME_CPU_X86 1
#endif
FASTME_CPU_TABLE_OPTIM_DECLARE(avx2)
FASTME_CPU_TABLE_OPTIM_DECLARE(avx512)
#endif
