// The CPU pooled lookup's entry points (kernels/cpu/pooling.h): the ISA dispatch and the split of
// the batch for the field-weight gradient.
#include "pooling.h"

#include <algorithm>

#include "isa.h"
#include "pooling_isa.h"

namespace fastme {
namespace kernels {
namespace {

// Samples per partial field-weight gradient: a function of the shapes only (not of the thread
// count or ISA), so the gradient's bits are too. About 64 samples each, at most 64 MiB of
// partials (each M x N x round_up(N, 16) accumulators).
long long weight_grad_chunks(DType dtype, long long batch, long long num_sets, long long fields) {
  const long long acc_size = dtype == DType::kFloat64 ? 8 : 4;
  const long long plane = std::max<long long>(1, num_sets * fields * ((fields + 15) / 16 * 16));
  const long long budget = std::max<long long>(1, (64LL << 20) / (plane * acc_size));
  return std::max<long long>(1, std::min({(batch + 63) / 64, budget, batch}));
}

}  // namespace

#ifdef FASTME_CPU_X86
#define FASTME_POOLING_DISPATCH(fn, ...)                 \
  switch (cpu::active_isa()) {                           \
    case cpu::Isa::kAvx512:                              \
      return cpu::avx512::fn(__VA_ARGS__);               \
    case cpu::Isa::kAvx2:                                \
      return cpu::avx2::fn(__VA_ARGS__);                 \
    default:                                             \
      return cpu::generic::fn(__VA_ARGS__);              \
  }
#else
#define FASTME_POOLING_DISPATCH(fn, ...) return cpu::generic::fn(__VA_ARGS__);
#endif

void cpu_fm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                    int num_sets, int dim, void* out) {
  threads = std::max(threads, 1);
  FASTME_POOLING_DISPATCH(fm_forward, threads, dtype, table, ix, num_sets, dim, out)
}

void cpu_fm_backward(int threads, DType dtype, const void* grad, const void* table,
                     const IndexArgs& ix, int num_sets, int dim, void* grad_emb) {
  threads = std::max(threads, 1);
  FASTME_POOLING_DISPATCH(fm_backward, threads, dtype, grad, table, ix, num_sets, dim, grad_emb)
}

void cpu_fwfm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                      int num_sets, int dim, const void* q_upper, void* out) {
  threads = std::max(threads, 1);
  FASTME_POOLING_DISPATCH(fwfm_forward, threads, dtype, table, ix, num_sets, dim, q_upper, out)
}

void cpu_fwfm_backward(int threads, DType dtype, const void* grad, const void* table,
                       const IndexArgs& ix, int num_sets, int dim, const void* q_full,
                       void* grad_emb, void* grad_weight) {
  threads = std::max(threads, 1);
  const long long chunks = weight_grad_chunks(dtype, ix.batch, num_sets, ix.num_fields);
  FASTME_POOLING_DISPATCH(fwfm_backward, threads, dtype, grad, table, ix, num_sets, dim, q_full,
                          grad_emb, chunks, grad_weight)
}

}  // namespace kernels
}  // namespace fastme
