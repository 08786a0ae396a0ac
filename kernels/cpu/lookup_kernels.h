// The CPU lookup's inner loops for the ISA of the including translation unit
// (kernels/cpu/lookup_<isa>.cpp defines FASTME_CPU_ISA_NS and is compiled with that ISA's flags).
#include <cstdint>
#include <cstring>

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
// the caches and a sample's N rows are random, so without it each copy waits for its row.
constexpr long long kPrefetchPairs = 16;

inline void prefetch_bytes(const char* p, long long n) {
  const char* end = p + n;
  for (const char* line = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{63});
       line < end; line += 64)
    __builtin_prefetch(line, 0, 3);
}

void gather(int threads, int elem_size, const void* table, const kernels::IndexArgs& ix,
            int num_sets, int dim, void* out) {
  const long long B = ix.batch, N = ix.num_fields, M = num_sets;
  const long long run = static_cast<long long>(dim) * elem_size;  // bytes of one set's row
  const long long row_bytes = M * run;
  const char* t = static_cast<const char*>(table);
  char* o = static_cast<char*>(out);
  // A sample's row of every field is read once, as one contiguous run of M*K elements, and
  // written as M runs of K into the M planes [b, m, :, :]. Each thread's samples are one block;
  // the row of the pair kPrefetchPairs ahead (in b * N + i order) is prefetched.
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (long long b = 0; b < B; ++b) {
      char* sample = o + b * M * N * run;
      long long ab = b, ai = kPrefetchPairs;  // the pair ahead: (b, 0) + kPrefetchPairs
      for (; ai >= N; ai -= N) ++ab;
      for (long long i = 0; i < N; ++i) {
        if (ab < B) {
          prefetch_bytes(t + global_row(ix, ab, ai) * row_bytes, row_bytes);
          if (++ai == N) ai = 0, ++ab;
        }
        const char* row = t + global_row(ix, b, i) * row_bytes;
        char* dst = sample + i * run;
        for (long long m = 0; m < M; ++m) copy_bytes(dst + m * N * run, row + m * run, run);
      }
    }
  }
}

void gather_to_bf16(int threads, const float* table, const kernels::IndexArgs& ix, int num_sets,
                    int dim, std::uint16_t* out) {
  const long long B = ix.batch, N = ix.num_fields, M = num_sets, K = dim;
  const long long row_bytes = M * K * static_cast<long long>(sizeof(float));
  // As gather, each run rounded to bfloat16 on its way (the x_0 of a bf16 cross network: no
  // float32 [B, M, N, K] written and read again by a cast).
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (long long b = 0; b < B; ++b) {
      std::uint16_t* sample = out + b * M * N * K;
      long long ab = b, ai = kPrefetchPairs;
      for (; ai >= N; ai -= N) ++ab;
      for (long long i = 0; i < N; ++i) {
        if (ab < B) {
          prefetch_bytes(reinterpret_cast<const char*>(table + global_row(ix, ab, ai) * M * K),
                         row_bytes);
          if (++ai == N) ai = 0, ++ab;
        }
        const float* row = table + global_row(ix, b, i) * M * K;
        std::uint16_t* dst = sample + i * K;
        for (long long m = 0; m < M; ++m) float_run_to_bf16(dst + m * N * K, row + m * K, K);
      }
    }
  }
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
