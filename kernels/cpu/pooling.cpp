// The CPU pooled lookup's entry points (kernels/cpu/pooling.h): the ISA dispatch and the split of
// the batch for the field-weight gradient.
#include "pooling.h"

#include <algorithm>
#include <vector>

#include "isa.h"
#include "pooling_isa.h"
#include "row_split.h"

namespace fastme {
namespace kernels {
namespace {

// The fixed ranges of samples of the backwards (kernels/cpu/pooling_isa.h): a function of the
// shapes only (not of the thread count or ISA), so the field-weight gradient's bits are too.
// About 32 samples each (a block of one range per thread stays in cache), at most 64 MiB of
// partial weight gradients (each M x N x round_up(N, 16) accumulators).
long long sample_chunks(DType dtype, long long batch, long long num_sets, long long fields) {
  const long long acc_size = dtype == DType::kFloat64 ? 8 : 4;
  const long long plane = std::max<long long>(1, num_sets * fields * ((fields + 15) / 16 * 16));
  const long long budget = std::max<long long>(1, (64LL << 20) / (plane * acc_size));
  return std::max<long long>(1, std::min({(batch + 31) / 32, budget, batch}));
}

// The row ranges of the threads, as the lookup's backward splits them (kernels/cpu/lookup.cpp).
struct RowSplit {
  std::vector<long long> rows, bounds;
  int buckets;
  RowSplit(int threads, const IndexArgs& ix) : rows(cpu::pair_rows(threads, ix)) {
    const long long pairs = ix.batch * ix.num_fields;
    buckets = static_cast<int>(
        std::max<long long>(1, std::min<long long>(threads, pairs / 2048)));
    bounds = cpu::row_bounds(rows, ix.num_rows, buckets);
  }
};

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
                     const IndexArgs& ix, int num_sets, int dim, void* grad_table) {
  threads = std::max(threads, 1);
  const RowSplit split(threads, ix);
  const long long chunks = sample_chunks(dtype, ix.batch, num_sets, ix.num_fields);
  FASTME_POOLING_DISPATCH(fm_backward, threads, dtype, grad, table, ix, num_sets, dim,
                          split.rows.data(), split.bounds.data(), split.buckets, chunks,
                          grad_table)
}

void cpu_fwfm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                      int num_sets, int dim, const void* q_upper, void* out) {
  threads = std::max(threads, 1);
  FASTME_POOLING_DISPATCH(fwfm_forward, threads, dtype, table, ix, num_sets, dim, q_upper, out)
}

void cpu_fwfm_backward(int threads, DType dtype, const void* grad, const void* table,
                       const IndexArgs& ix, int num_sets, int dim, const void* q_full,
                       void* grad_table, void* grad_weight) {
  threads = std::max(threads, 1);
  const RowSplit split(threads, ix);
  const long long chunks = sample_chunks(dtype, ix.batch, num_sets, ix.num_fields);
  FASTME_POOLING_DISPATCH(fwfm_backward, threads, dtype, grad, table, ix, num_sets, dim, q_full,
                          split.rows.data(), split.bounds.data(), split.buckets, chunks,
                          grad_table, grad_weight)
}

}  // namespace kernels
}  // namespace fastme
