#pragma once
// How the CPU backwards split the table gradient between threads (kernels/cpu/lookup.cpp,
// pooling.cpp): each thread owns a range of rows and adds, in ascending pair order, the pairs
// whose rows are in its range, so that no row is shared and every row's sum runs in the same order
// whatever the number of threads. In an anonymous namespace, as kernels/cpu/index.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "index.h"

namespace fastme {
namespace cpu {
namespace {

using kernels::IndexArgs;

// Row of every pair p = b * N + i.
inline std::vector<long long> pair_rows(int threads, const IndexArgs& ix) {
  std::vector<long long> rows(static_cast<size_t>(ix.batch * ix.num_fields));
  const long long N = ix.num_fields;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long b = 0; b < ix.batch; ++b)
    for (long long i = 0; i < N; ++i) rows[b * N + i] = global_row(ix, b, i);
  return rows;
}

// Split the rows into `buckets` ranges holding about as many pairs each (quantiles of a sorted
// sample of the pairs' rows): one thread sums each range, so that no row is shared.
inline std::vector<long long> row_bounds(const long long* rows, long long pairs,
                                         long long num_rows, int buckets) {
  std::vector<long long> bounds(buckets + 1, 0);
  bounds[buckets] = num_rows;
  if (buckets > 1) {
    const long long size = std::min<long long>(pairs, 256LL * buckets);
    std::vector<long long> sample(size);
    for (long long s = 0; s < size; ++s) sample[s] = rows[s * pairs / size];
    std::sort(sample.begin(), sample.end());
    for (int q = 1; q < buckets; ++q) bounds[q] = sample[q * size / buckets];
  }
  return bounds;
}

inline std::vector<long long> row_bounds(const std::vector<long long>& rows, long long num_rows,
                                         int buckets) {
  return row_bounds(rows.data(), static_cast<long long>(rows.size()), num_rows, buckets);
}


// Zero-fill grad [R, M*K], rows split evenly over the threads (call inside a parallel region).
template <typename T>
void zero_rows(T* grad, long long num_rows, long long row_elems) {
  constexpr long long kChunk = 1024;
  const long long chunks = (num_rows + kChunk - 1) / kChunk;
#pragma omp for schedule(static)
  for (long long c = 0; c < chunks; ++c) {
    const long long first = c * kChunk;
    const long long count = num_rows - first < kChunk ? num_rows - first : kChunk;
    std::memset(grad + first * row_elems, 0, sizeof(T) * count * row_elems);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace fastme
