// The CPU cross network's entry points (kernels/cpu/cross.h): the ISA dispatch and the fixed
// sample ranges of the bias gradient.
#include "cross.h"

#include <algorithm>

#include "cross_isa.h"
#include "isa.h"

namespace fastme {
namespace kernels {

#ifdef FASTME_CPU_X86
#define FASTME_CROSS_DISPATCH(fn, ...)     \
  switch (cpu::active_isa()) {             \
    case cpu::Isa::kAvx512:                \
      return cpu::avx512::fn(__VA_ARGS__); \
    case cpu::Isa::kAvx2:                  \
      return cpu::avx2::fn(__VA_ARGS__);   \
    default:                               \
      return cpu::generic::fn(__VA_ARGS__); \
  }
#else
#define FASTME_CROSS_DISPATCH(fn, ...) return cpu::generic::fn(__VA_ARGS__);
#endif

void cpu_cross_layer_forward(int threads, DType dtype, int num_sets, long long batch, int dim,
                             const void* x0, long long x0_sm, long long x0_sb, const void* z,
                             const void* x, long long x_sm, long long x_sb, const void* bias,
                             void* out, long long out_sm, long long out_sb) {
  threads = std::max(threads, 1);
  FASTME_CROSS_DISPATCH(cross_layer_forward, threads, dtype, num_sets, batch, dim, x0, x0_sm,
                        x0_sb, z, x, x_sm, x_sb, bias, out, out_sm, out_sb)
}

void cpu_cross_layer_backward(int threads, DType dtype, int num_sets, long long batch, int dim,
                              const void* g, long long g_sm, long long g_sb, const void* h,
                              void* g_out, const void* x0, long long x0_sm, long long x0_sb,
                              const void* z, const void* bias, void* u, void* dx0_acc,
                              bool accumulate, void* grad_bias) {
  threads = std::max(threads, 1);
  // 64 samples per range of the bias gradient's partial sums: a function of nothing but the
  // constant, so its bits do not depend on the thread count.
  const long long chunk = 64;
  FASTME_CROSS_DISPATCH(cross_layer_backward, threads, dtype, num_sets, batch, dim, chunk, g,
                        g_sm, g_sb, h, g_out, x0, x0_sm, x0_sb, z, bias, u, dx0_acc, accumulate,
                        grad_bias)
}

void cpu_cross_grad_x0(int threads, DType dtype, int num_sets, long long batch, int dim,
                       const void* dx0_acc, const void* g, long long g_sm, long long g_sb,
                       const void* h, void* grad_x0, long long gx_sm, long long gx_sb) {
  threads = std::max(threads, 1);
  FASTME_CROSS_DISPATCH(cross_grad_x0, threads, dtype, num_sets, batch, dim, dx0_acc, g, g_sm,
                        g_sb, h, grad_x0, gx_sm, gx_sb)
}

void cpu_set_relu_mean(int threads, DType dtype, int num_sets, long long batch, int dim,
                       const void* const* z, const void* bias, void* out) {
  threads = std::max(threads, 1);
  FASTME_CROSS_DISPATCH(set_relu_mean, threads, dtype, num_sets, batch, dim, z, bias, out)
}

}  // namespace kernels
}  // namespace fastme
