// The CPU lookup's inner loops for the ISA of the including translation unit
// (kernels/cpu/lookup_<isa>.cpp defines FASTME_CPU_ISA_NS and is compiled with that ISA's flags).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "index.h"
#include "lookup_isa.h"
#include "row_split.h"
#include "vec.h"

namespace fastme {
namespace cpu {
namespace FASTME_CPU_ISA_NS {
namespace {

template <typename T>
void scatter_impl(int threads, const T* src, const long long* rows, const long long* bounds,
                  int buckets, const kernels::IndexArgs& ix, int num_sets, int dim, T* grad) {
  const long long B = ix.batch, N = ix.num_fields, K = dim, M = num_sets;
  const long long row_elems = M * K;
#pragma omp parallel num_threads(threads)
  {
    zero_rows(grad, ix.num_rows, row_elems);  // ends with a barrier
    // Each bucket (a range of rows) belongs to one thread, which scans every pair in order: the
    // sum of each row runs in ascending pair order, whatever the number of threads.
#pragma omp for schedule(static, 1)
    for (int q = 0; q < buckets; ++q) {
      const long long lo = bounds[q], hi = bounds[q + 1];
      if (lo >= hi) continue;
      for (long long b = 0; b < B; ++b) {
        const long long* pair_rows = rows + b * N;
        for (long long i = 0; i < N; ++i) {
          const long long r = pair_rows[i];
          if (r < lo || r >= hi) continue;
          T* g = grad + r * row_elems;
          const T* s = src + (b * M * N + i) * K;
          for (long long m = 0; m < M; ++m) add_run(g + m * K, s + m * N * K, K);
        }
      }
    }
  }
}

}  // namespace

// Pairs whose table row is prefetched ahead of its copy: the table (~1M rows) is far larger than
// the caches and a sample's N rows are random, so without it each copy waits for its row. A
// power of two: the rows of the pairs in flight are kept in a ring of this size.
constexpr long long kPrefetchPairs = 16;

inline void prefetch_bytes(const char* p, long long n) {
  const char* end = p + n;
  for (const char* line = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) &
                                                        ~std::uintptr_t{63});
       line < end; line += 64)
    __builtin_prefetch(line, 0, 3);
}

// Calls copy(b, i, row) for every pair (b, i) in order, each thread one block of samples, the
// row of the pair kPrefetchPairs ahead prefetched (row_bytes from table). Everything the loop
// reads is a local (the copies write through char pointers, which may alias anything else: the
// compiler would reload the index record after every store); the offsets are read once.
template <typename I, typename Copy>
void for_each_pair(int threads, const I* indices, const long long* offsets, long long num_rows,
                   long long B, long long N, const char* table, long long row_bytes, Copy copy) {
  constexpr long long mask = kPrefetchPairs - 1;
  static_assert((kPrefetchPairs & mask) == 0, "kPrefetchPairs must be a power of two");
  const int team = static_cast<int>(std::max<long long>(1, std::min<long long>(threads, B)));
#pragma omp parallel for schedule(static, 1) num_threads(team)
  for (int t = 0; t < team; ++t) {
    const long long last = B * (t + 1) / team * N;
    long long ring[kPrefetchPairs];
    long long q = B * t / team * N, qi = 0;  // the pair ahead and its field
    const auto fetch = [&]() {
      long long r = static_cast<long long>(indices[q]) + offsets[qi];
      r = r < 0 ? 0 : (r >= num_rows ? num_rows - 1 : r);
      ring[q & mask] = r;
      prefetch_bytes(table + r * row_bytes, row_bytes);
      ++q;
      if (++qi == N) qi = 0;
    };
    const long long first = q;
    while (q < last && q < first + kPrefetchPairs) fetch();
    long long b = first / N, i = 0;
    for (long long p = first; p < last; ++p) {
      const long long row = ring[p & mask];
      if (q < last) fetch();
      copy(b, i, row);
      if (++i == N) i = 0, ++b;
    }
  }
}

template <typename Copy>
void for_each_pair(int threads, const kernels::IndexArgs& ix, const char* table,
                   long long row_bytes, Copy copy) {
  std::vector<long long> offsets(ix.num_fields);
  for (long long i = 0; i < ix.num_fields; ++i)
    offsets[i] = load_index(ix.offsets, ix.offsets_int64, i);
  if (ix.indices_int64)
    for_each_pair(threads, static_cast<const long long*>(ix.indices), offsets.data(),
                  ix.num_rows, ix.batch, ix.num_fields, table, row_bytes, copy);
  else
    for_each_pair(threads, static_cast<const int*>(ix.indices), offsets.data(), ix.num_rows,
                  ix.batch, ix.num_fields, table, row_bytes, copy);
}

void gather(int threads, int elem_size, const void* table, const kernels::IndexArgs& ix,
            int num_sets, int dim, void* out) {
  const long long N = ix.num_fields, M = num_sets;
  const long long run = static_cast<long long>(dim) * elem_size;  // bytes of one set's row
  const char* t = static_cast<const char*>(table);
  char* o = static_cast<char*>(out);
  // A pair's row is read once, as one contiguous run of M*K elements, and written as M runs of
  // K into the M planes [b, m, :, :].
  for_each_pair(threads, ix, t, M * run, [=](long long b, long long i, long long row) {
    const char* src = t + row * M * run;
    char* dst = o + (b * M * N + i) * run;
    for (long long m = 0; m < M; ++m) copy_bytes(dst + m * N * run, src + m * run, run);
  });
}

void gather_to_bf16(int threads, const float* table, const kernels::IndexArgs& ix, int num_sets,
                    int dim, std::uint16_t* out) {
  const long long N = ix.num_fields, M = num_sets, K = dim;
  // As gather, each run rounded to bfloat16 on its way (the x_0 of a bf16 cross network: no
  // float32 [B, M, N, K] written and read again by a cast).
  for_each_pair(threads, ix, reinterpret_cast<const char*>(table),
                M * K * static_cast<long long>(sizeof(float)),
                [=](long long b, long long i, long long row) {
                  const float* src = table + row * M * K;
                  std::uint16_t* dst = out + (b * M * N + i) * K;
                  for (long long m = 0; m < M; ++m)
                    float_run_to_bf16(dst + m * N * K, src + m * K, K);
                });
}

void scatter(int threads, const float* src, const long long* rows, const long long* bounds,
             int buckets, const kernels::IndexArgs& ix, int num_sets, int dim, float* grad) {
  scatter_impl(threads, src, rows, bounds, buckets, ix, num_sets, dim, grad);
}

void scatter(int threads, const double* src, const long long* rows, const long long* bounds,
             int buckets, const kernels::IndexArgs& ix, int num_sets, int dim, double* grad) {
  scatter_impl(threads, src, rows, bounds, buckets, ix, num_sets, dim, grad);
}

}  // namespace FASTME_CPU_ISA_NS
}  // namespace cpu
}  // namespace fastme
