// The CPU lookup's entry points (kernels/cpu/lookup.h): the ISA dispatch, the row partition of
// the backward, and the 16-bit backward (summed in float32: no ISA-specific loops).
#include "lookup.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "half.h"
#include "index.h"
#include "isa.h"
#include "lookup_isa.h"
#include "row_split.h"

namespace fastme {
namespace kernels {
namespace {

using cpu::Isa;
using cpu::from_float;
using cpu::pair_rows;
using cpu::row_bounds;
using cpu::to_float;

int element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
      return 8;
    case DType::kFloat32:
      return 4;
    default:
      return 2;
  }
}

// 16-bit gradients: each thread collects the pairs of its row range, sorts them by (row, pair)
// and sums each row in float32, rounding once.
void scatter_16bit(int threads, DType dtype, const std::uint16_t* src,
                   const std::vector<long long>& rows, const std::vector<long long>& bounds,
                   const IndexArgs& ix, int num_sets, int dim, std::uint16_t* grad) {
  const long long N = ix.num_fields, M = num_sets, K = dim, row_elems = M * K;
  const int buckets = static_cast<int>(bounds.size()) - 1;
  const long long pairs = static_cast<long long>(rows.size());
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (long long r = 0; r < ix.num_rows; ++r)
      std::memset(grad + r * row_elems, 0, sizeof(std::uint16_t) * row_elems);
    std::vector<std::pair<long long, long long>> mine;
    std::vector<float> acc(row_elems);
#pragma omp for schedule(static, 1)
    for (int q = 0; q < buckets; ++q) {
      mine.clear();
      for (long long p = 0; p < pairs; ++p)
        if (rows[p] >= bounds[q] && rows[p] < bounds[q + 1]) mine.emplace_back(rows[p], p);
      std::sort(mine.begin(), mine.end());
      for (size_t s = 0; s < mine.size();) {
        const long long r = mine[s].first;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (; s < mine.size() && mine[s].first == r; ++s) {
          const long long b = mine[s].second / N, i = mine[s].second % N;
          for (long long m = 0; m < M; ++m) {
            const std::uint16_t* run = src + ((b * M + m) * N + i) * K;
            for (long long k = 0; k < K; ++k) acc[m * K + k] += to_float(run[k], dtype);
          }
        }
        for (long long e = 0; e < row_elems; ++e) grad[r * row_elems + e] = from_float(acc[e], dtype);
      }
    }
  }
}

// Bad pairs of rows [lo, hi): counted with one unsigned compare per pair (a negative index is a
// huge unsigned one), which the compiler vectorises; the first one is searched for only when the
// count says there is one.
template <typename I>
std::pair<long long, long long> check_range(const I* indices, long long lo, long long hi,
                                            long long N, const unsigned long long* limits) {
  long long count = 0;
  for (long long b = lo; b < hi; ++b) {
    const I* row = indices + b * N;
    for (long long i = 0; i < N; ++i)
      count += static_cast<unsigned long long>(static_cast<long long>(row[i])) >= limits[i];
  }
  if (count == 0) return {-1, 0};
  for (long long p = lo * N; p < hi * N; ++p)
    if (static_cast<unsigned long long>(static_cast<long long>(indices[p])) >= limits[p % N])
      return {p, count};
  return {-1, count};  // not reached
}

}  // namespace

std::pair<long long, long long> cpu_check_indices(int threads, const void* indices,
                                                  bool indices_int64, long long batch,
                                                  long long num_fields, const void* field_dims,
                                                  bool field_dims_int64) {
  if (batch <= 0 || num_fields <= 0) return {-1, 0};
  // A negative cardinality admits no index (the offsets check rejects it first anyway).
  std::vector<unsigned long long> limits(num_fields);
  for (long long i = 0; i < num_fields; ++i) {
    const long long d = cpu::load_index(field_dims, field_dims_int64, i);
    limits[i] = d < 0 ? 0 : static_cast<unsigned long long>(d);
  }
  // About 64k pairs per thread at least: below that a second thread costs more than it saves.
  const long long pairs = batch * num_fields;
  const int team = static_cast<int>(std::max<long long>(
      1, std::min<long long>(std::max(threads, 1), pairs / 65536)));
  std::vector<std::pair<long long, long long>> found(team, {-1, 0});
#pragma omp parallel for schedule(static, 1) num_threads(team)
  for (int t = 0; t < team; ++t) {
    const long long lo = batch * t / team, hi = batch * (t + 1) / team;
    found[t] = indices_int64
                   ? check_range(static_cast<const long long*>(indices), lo, hi, num_fields,
                                 limits.data())
                   : check_range(static_cast<const int*>(indices), lo, hi, num_fields,
                                 limits.data());
  }
  std::pair<long long, long long> result{-1, 0};
  for (const auto& [first, count] : found) {  // ranges in order: the first bad is the lowest
    if (result.first < 0 && first >= 0) result.first = first;
    result.second += count;
  }
  return result;
}

void cpu_lookup_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                        int num_sets, int dim, void* out) {
  const int size = element_size(dtype);
  threads = std::max(threads, 1);
  switch (cpu::active_isa()) {
#ifdef FASTME_CPU_X86
    case Isa::kAvx512:
      return cpu::avx512::gather(threads, size, table, ix, num_sets, dim, out);
    case Isa::kAvx2:
      return cpu::avx2::gather(threads, size, table, ix, num_sets, dim, out);
#endif
    default:
      return cpu::generic::gather(threads, size, table, ix, num_sets, dim, out);
  }
}

void cpu_lookup_forward_to(int threads, const void* table, const IndexArgs& ix, int num_sets,
                           int dim, DType out_dtype, void* out) {
  threads = std::max(threads, 1);
  const float* t = static_cast<const float*>(table);
  if (out_dtype == DType::kBFloat16) {
    std::uint16_t* o = static_cast<std::uint16_t*>(out);
    switch (cpu::active_isa()) {
#ifdef FASTME_CPU_X86
      case Isa::kAvx512:
        return cpu::avx512::gather_to_bf16(threads, t, ix, num_sets, dim, o);
      case Isa::kAvx2:
        return cpu::avx2::gather_to_bf16(threads, t, ix, num_sets, dim, o);
#endif
      default:
        return cpu::generic::gather_to_bf16(threads, t, ix, num_sets, dim, o);
    }
  }
  if (out_dtype != DType::kFloat16)
    throw std::invalid_argument("fastme: cpu_lookup_forward_to converts to bfloat16 or float16");
  // float16: element by element (no vector conversion here; rarely used on CPUs)
  const long long B = ix.batch, N = ix.num_fields, M = num_sets, K = dim;
  std::uint16_t* o = static_cast<std::uint16_t*>(out);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long b = 0; b < B; ++b)
    for (long long i = 0; i < N; ++i) {
      const float* row = t + cpu::global_row(ix, b, i) * M * K;
      for (long long m = 0; m < M; ++m)
        for (long long k = 0; k < K; ++k)
          o[((b * M + m) * N + i) * K + k] = cpu::float_to_fp16(row[m * K + k]);
    }
}

void cpu_lookup_backward(int threads, DType dtype, const void* grad, const IndexArgs& ix,
                         int num_sets, int dim, void* grad_table) {
  threads = std::max(threads, 1);
  const std::vector<long long> rows = pair_rows(threads, ix);
  // About 2048 pairs per bucket at least: below that a second thread costs more than it saves.
  const long long pairs = ix.batch * ix.num_fields;
  const int buckets = static_cast<int>(std::max<long long>(1, std::min<long long>(threads, pairs / 2048)));
  const std::vector<long long> bounds = row_bounds(rows, ix.num_rows, buckets);
  if (dtype == DType::kBFloat16 || dtype == DType::kFloat16) {
    return scatter_16bit(threads, dtype, static_cast<const std::uint16_t*>(grad), rows, bounds, ix,
                         num_sets, dim, static_cast<std::uint16_t*>(grad_table));
  }
#define FASTME_SCATTER(isa, T)                                                                  \
  cpu::isa::scatter(threads, static_cast<const T*>(grad), rows.data(), bounds.data(), buckets, \
                    ix, num_sets, dim, static_cast<T*>(grad_table))
#define FASTME_SCATTER_ISA(T)                                                                   \
  switch (cpu::active_isa()) {                                                                  \
    FASTME_SCATTER_X86(T)                                                                       \
    default:                                                                                    \
      return FASTME_SCATTER(generic, T);                                                        \
  }
#ifdef FASTME_CPU_X86
#define FASTME_SCATTER_X86(T)             \
  case Isa::kAvx512:                      \
    return FASTME_SCATTER(avx512, T);     \
  case Isa::kAvx2:                        \
    return FASTME_SCATTER(avx2, T);
#else
#define FASTME_SCATTER_X86(T)
#endif
  if (dtype == DType::kFloat64) {
    FASTME_SCATTER_ISA(double)
  }
  FASTME_SCATTER_ISA(float)
}

}  // namespace kernels
}  // namespace fastme
