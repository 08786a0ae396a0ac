// The fused table optimizers' loops for the ISA of the including translation unit
// (kernels/cpu/table_optim_<isa>.cpp defines FASTME_CPU_ISA_NS and is compiled with that ISA's
// flags; the compiler vectorises the per-row loops for it).
#include <cmath>
#include <cstring>
#include <vector>

#include "table_optim_isa.h"

namespace fastme {
namespace cpu {
namespace FASTME_CPU_ISA_NS {
namespace {

// One touched row: g [M*K] is its summed gradient (overwritten), w its weights, s0 / s1 its state.
// The formulas and their operation order are fastme/train/table_optim.py's torch ops'.
template <typename T>
inline void update_row(const OptimStep& s, T* __restrict w, T* __restrict g, T* __restrict s0,
                       T* __restrict s1) {
  const long long M = s.num_sets, K = s.dim, E = M * K;
  const T lr = static_cast<T>(s.lr), eps = static_cast<T>(s.eps);
  if (s.weight_decay != 0) {
    const T wd = static_cast<T>(s.weight_decay);
#pragma omp simd
    for (long long e = 0; e < E; ++e) g[e] += wd * w[e];
  }
  switch (s.kind) {
    case 0:  // sgd
#pragma omp simd
      for (long long e = 0; e < E; ++e) w[e] -= lr * g[e];
      break;
    case 1:  // adagrad
#pragma omp simd
      for (long long e = 0; e < E; ++e) {
        const T sum = s0[e] + g[e] * g[e];
        s0[e] = sum;
        w[e] -= lr * (g[e] / (std::sqrt(sum) + eps));
      }
      break;
    case 2:  // rowwise_adagrad: one accumulator per (row, set), mean of g^2 over K
      for (long long m = 0; m < M; ++m) {
        T* gm = g + m * K;
        T* wm = w + m * K;
        T sq = 0;
        for (long long k = 0; k < K; ++k) sq += gm[k] * gm[k];
        const T sum = s0[m] + sq / static_cast<T>(K);
        s0[m] = sum;
        const T denom = std::sqrt(sum) + eps;
#pragma omp simd
        for (long long k = 0; k < K; ++k) wm[k] -= lr * (gm[k] / denom);
      }
      break;
    default: {  // lazy_adam
      const T a1 = static_cast<T>(1 - s.beta1), b2 = static_cast<T>(s.beta2),
              a2 = static_cast<T>(1 - s.beta2), bias2 = static_cast<T>(s.bias2_sqrt),
              step = static_cast<T>(s.lr / s.bias1);
#pragma omp simd
      for (long long e = 0; e < E; ++e) {
        const T m1 = s0[e] + a1 * (g[e] - s0[e]);
        const T v = s1[e] * b2 + a2 * (g[e] * g[e]);
        s0[e] = m1;
        s1[e] = v;
        w[e] -= step * (m1 / (std::sqrt(v) / bias2 + eps));
      }
    }
  }
}

template <typename T>
void step_impl(int threads, const OptimStep& s, T* table, const T* grad, T* state0, T* state1) {
  const long long E = s.num_sets * s.dim, P = s.pairs;
  const long long state_elems = s.kind == 2 ? s.num_sets : E;
  // next[p]: the next pair of p's row (-1: none). Each thread links the pairs of its own rows.
  std::vector<int> next(static_cast<size_t>(P));
#pragma omp parallel num_threads(threads)
  {
    std::vector<long long> slot_rows;
    std::vector<int> head, tail;
    std::vector<T> acc(static_cast<size_t>(E));
    // Each bucket (a range of rows) belongs to one thread. It links its pairs row by row in
    // ascending pair order (slots numbered in order of first touch), then sums each row's pairs
    // along its list and updates the row: no row is shared and every sum runs in the same order
    // whatever the number of threads.
#pragma omp for schedule(static, 1)
    for (int q = 0; q < s.buckets; ++q) {
      const long long lo = s.bounds[q], hi = s.bounds[q + 1];
      if (lo >= hi) continue;
      slot_rows.clear();
      head.clear();
      tail.clear();
      for (long long p = 0; p < P; ++p) {
        const long long r = s.rows[p];
        if (r < lo || r >= hi) continue;
        int& slot = s.slots[r];
        if (slot < 0) {
          slot = static_cast<int>(slot_rows.size());
          slot_rows.push_back(r);
          head.push_back(static_cast<int>(p));
          tail.push_back(static_cast<int>(p));
        } else {
          next[tail[slot]] = static_cast<int>(p);
          tail[slot] = static_cast<int>(p);
        }
        next[p] = -1;
      }
      const size_t slots = slot_rows.size();
      for (size_t k = 0; k < slots; ++k) {
        if (k + 2 < slots) {  // the table is far larger than the caches: fetch ahead
          __builtin_prefetch(table + slot_rows[k + 2] * E, 1);
          __builtin_prefetch(grad + static_cast<long long>(head[k + 2]) * E);
        }
        const long long r = slot_rows[k];
        int p = head[k];
        std::memcpy(acc.data(), grad + static_cast<long long>(p) * E, sizeof(T) * E);
        for (p = next[p]; p >= 0; p = next[p]) {
          const T* src = grad + static_cast<long long>(p) * E;
          T* a = acc.data();
#pragma omp simd
          for (long long e = 0; e < E; ++e) a[e] += src[e];
        }
        update_row(s, table + r * E, acc.data(), state0 ? state0 + r * state_elems : nullptr,
                   state1 ? state1 + r * E : nullptr);
        s.slots[r] = -1;
      }
    }
  }
}

}  // namespace

void table_optim_step(int threads, const OptimStep& s, float* table, const float* grad,
                      float* state0, float* state1) {
  step_impl(threads, s, table, grad, state0, state1);
}

void table_optim_step(int threads, const OptimStep& s, double* table, const double* grad,
                      double* state0, double* state1) {
  step_impl(threads, s, table, grad, state0, state1);
}

}  // namespace FASTME_CPU_ISA_NS
}  // namespace cpu
}  // namespace fastme
