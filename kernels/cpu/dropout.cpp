// Dropout's entry point (kernels/cpu/dropout.h): argument checks and the ISA dispatch.
#include "dropout.h"

#include <algorithm>
#include <stdexcept>

#include "dropout_isa.h"
#include "isa.h"

namespace fastme {
namespace kernels {

void cpu_dropout(int threads, DType dtype, const void* x, void* out, long long n,
                 unsigned long long seed, unsigned long long threshold, double scale) {
  if (threshold > 0xffffffffULL)
    throw std::invalid_argument("fastme: the dropout threshold must be below 2^32");
  if (n <= 0) return;
  threads = std::max(threads, 1);
  const unsigned int t = static_cast<unsigned int>(threshold);
  switch (cpu::active_isa()) {
#ifdef FASTME_CPU_X86
    case cpu::Isa::kAvx512:
      return cpu::avx512::dropout(threads, dtype, x, out, n, seed, t, scale);
    case cpu::Isa::kAvx2:
      return cpu::avx2::dropout(threads, dtype, x, out, n, seed, t, scale);
#endif
    default:
      return cpu::generic::dropout(threads, dtype, x, out, n, seed, t, scale);
  }
}

}  // namespace kernels
}  // namespace fastme
