// The fused table optimizers' entry point (kernels/cpu/table_optim.h): argument checks, the row
// partition between threads and the ISA dispatch.
#include "table_optim.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "isa.h"
#include "row_split.h"
#include "table_optim_isa.h"

namespace fastme {
namespace kernels {
namespace {

// The row ranges [bounds[q], bounds[q + 1]) of the threads that sum the pairs (each about as many
// pairs, kernels/cpu/row_split.h), clamped to the table: rows outside it are skipped. About
// 2048 pairs per range at least: below that a second thread costs more than it saves.
std::vector<long long> thread_row_ranges(int threads, const long long* rows, long long pairs,
                                         long long num_rows) {
  const int buckets =
      static_cast<int>(std::max<long long>(1, std::min<long long>(threads, pairs / 2048)));
  std::vector<long long> bounds = cpu::row_bounds(rows, pairs, num_rows, buckets);
  for (long long& b : bounds) b = std::min(std::max(b, 0LL), num_rows);
  return bounds;
}

}  // namespace

void cpu_table_optim_step(int threads, DType dtype, int kind, void* table, long long num_rows,
                          int num_sets, int dim, const long long* rows, long long pairs,
                          const void* grad, void* state0, void* state1, int* slots, double lr,
                          double weight_decay, double eps, double beta1, double beta2,
                          long long step) {
  if (kind < 0 || kind > 3) throw std::invalid_argument("fastme: unknown table optimizer kind");
  if (dtype != DType::kFloat32 && dtype != DType::kFloat64)
    throw std::invalid_argument("fastme: the fused table optimizers take float32 or float64");
  if (pairs >= INT_MAX) throw std::invalid_argument("fastme: too many gradient rows (>= 2^31)");
  if ((kind != 0 && state0 == nullptr) || (kind == 3 && state1 == nullptr))
    throw std::invalid_argument("fastme: the table optimizer's state is missing");
  if (pairs <= 0 || num_rows <= 0) return;
  threads = std::max(threads, 1);
  const std::vector<long long> bounds = thread_row_ranges(threads, rows, pairs, num_rows);
  const int buckets = static_cast<int>(bounds.size()) - 1;
  cpu::OptimStep s{kind, num_rows, num_sets, dim, pairs, rows, bounds.data(), buckets, slots,
                   lr, weight_decay, eps, beta1, beta2, 1.0, 1.0};
  if (kind == 3) {
    s.bias1 = 1 - std::pow(beta1, static_cast<double>(step));
    s.bias2_sqrt = std::sqrt(1 - std::pow(beta2, static_cast<double>(step)));
  }
#define FASTME_OPTIM(isa, T)                                                                 \
  cpu::isa::table_optim_step(threads, s, static_cast<T*>(table), static_cast<const T*>(grad), \
                             static_cast<T*>(state0), static_cast<T*>(state1))
#define FASTME_OPTIM_ISA(T)            \
  switch (cpu::active_isa()) {         \
    FASTME_OPTIM_X86(T)                \
    default:                           \
      return FASTME_OPTIM(generic, T); \
  }
#ifdef FASTME_CPU_X86
#define FASTME_OPTIM_X86(T)       \
  case cpu::Isa::kAvx512:         \
    return FASTME_OPTIM(avx512, T); \
  case cpu::Isa::kAvx2:           \
    return FASTME_OPTIM(avx2, T);
#else
#define FASTME_OPTIM_X86(T)
#endif
  if (dtype == DType::kFloat64) {
    FASTME_OPTIM_ISA(double)
  }
  FASTME_OPTIM_ISA(float)
}

namespace {

template <typename T>
void pairs_scatter(int threads, T* buffer, long long num_rows, long long E, const long long* rows,
                   long long pairs, const T* values, bool zero) {
  const std::vector<long long> bounds = thread_row_ranges(threads, rows, pairs, num_rows);
  const int buckets = static_cast<int>(bounds.size()) - 1;
#pragma omp parallel for schedule(static, 1) num_threads(buckets)
  for (int t = 0; t < buckets; ++t) {
    const long long lo = bounds[t], hi = bounds[t + 1];
    for (long long p = 0; p < pairs; ++p) {
      const long long r = rows[p];
      if (r < lo || r >= hi) continue;
      T* __restrict dst = buffer + r * E;
      if (zero) {
        std::fill(dst, dst + E, T(0));
      } else {
        const T* __restrict src = values + p * E;
#pragma omp simd
        for (long long e = 0; e < E; ++e) dst[e] += src[e];
      }
    }
  }
}

}  // namespace

void cpu_table_pairs_scatter(int threads, DType dtype, void* buffer, long long num_rows,
                             long long row_elems, const long long* rows, long long pairs,
                             const void* values, bool zero) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat64)
    throw std::invalid_argument("fastme: the gradient buffer must be float32 or float64");
  if (pairs <= 0 || num_rows <= 0 || row_elems <= 0) return;
  threads = std::max(threads, 1);
  if (dtype == DType::kFloat64)
    pairs_scatter(threads, static_cast<double*>(buffer), num_rows, row_elems, rows, pairs,
                  static_cast<const double*>(values), zero);
  else
    pairs_scatter(threads, static_cast<float*>(buffer), num_rows, row_elems, rows, pairs,
                  static_cast<const float*>(values), zero);
}

}  // namespace kernels
}  // namespace fastme
