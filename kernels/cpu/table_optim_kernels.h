// The fused table optimizers' loops for the ISA of the including translation unit
// (kernels/cpu/table_optim_<isa>.cpp defines FASTME_CPU_ISA_NS and is compiled with that ISA's
// flags; the compiler vectorises the per-row loops for it).
#include <algorithm>
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

// Rows whose slot / table row is fetched ahead of use: the map and the table are far larger
// than the caches and are read at random.
constexpr long long kAhead = 16;

template <typename T>
void step_impl(int threads, const OptimStep& s, T* table, const T* grad, T* state0, T* state1) {
  const long long E = s.num_sets * s.dim, P = s.pairs;
  const long long state_elems = s.kind == 2 ? s.num_sets : E;
  int* const slot_of = s.slots;
#pragma omp parallel num_threads(threads)
  {
    // Each thread's summed rows, kept between calls (the team's threads persist): no buffer is
    // allocated and first touched every step. A thread new to the team starts with empty ones;
    // each keeps its largest size (its rows of one step x M*K), freed when the thread exits.
    thread_local std::vector<T> acc;
    thread_local std::vector<long long> slot_rows;
    // Each bucket (a range of rows) belongs to one thread. It streams through the pairs in
    // ascending order, giving each of its rows a slot on first touch and adding the pair's
    // values into the slot, then updates its rows slot by slot: no row is shared, and every
    // row's sum runs in ascending pair order whatever the number of threads.
#pragma omp for schedule(static, 1)
    for (int q = 0; q < s.buckets; ++q) {
      const long long lo = s.bounds[q], hi = s.bounds[q + 1];
      if (lo >= hi) continue;
      slot_rows.clear();
      for (long long p = 0; p < P; ++p) {
        if (p + kAhead < P) {
          const long long ahead = s.rows[p + kAhead];
          if (ahead >= lo && ahead < hi) __builtin_prefetch(slot_of + ahead);
        }
        const long long r = s.rows[p];
        if (r < lo || r >= hi) continue;
        const T* src = grad + p * E;
        int slot = slot_of[r];
        if (slot < 0) {
          slot = static_cast<int>(slot_rows.size());
          slot_of[r] = slot;
          slot_rows.push_back(r);
          if (static_cast<long long>(acc.size()) < (slot + 1) * E)
            acc.resize(std::max<size_t>(acc.size() * 2, static_cast<size_t>((slot + 1) * E)));
          std::memcpy(acc.data() + slot * E, src, sizeof(T) * E);
        } else {
          T* a = acc.data() + slot * E;
#pragma omp simd
          for (long long e = 0; e < E; ++e) a[e] += src[e];
        }
      }
      const long long slots = static_cast<long long>(slot_rows.size());
      for (long long k = 0; k < slots; ++k) {
        if (k + kAhead < slots) {
          const long long ahead = slot_rows[k + kAhead];
          for (long long b = 0; b < E * static_cast<long long>(sizeof(T)); b += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(table + ahead * E) + b, 1);
          if (state0) __builtin_prefetch(state0 + ahead * state_elems, 1);
          if (state1) __builtin_prefetch(state1 + ahead * E, 1);
        }
        const long long r = slot_rows[k];
        update_row(s, table + r * E, acc.data() + k * E,
                   state0 ? state0 + r * state_elems : nullptr, state1 ? state1 + r * E : nullptr);
        slot_of[r] = -1;
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
