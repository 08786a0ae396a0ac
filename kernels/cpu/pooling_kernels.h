// The CPU pooled lookup's inner loops for the ISA of the including translation unit
// (kernels/cpu/pooling_<isa>.cpp defines FASTME_CPU_ISA_NS and is compiled with that ISA's flags).
//
// One thread handles one sample at a time: its N rows (all M sets) are converted into a
// zero-padded buffer E [M, N, Kp] (Kp = K rounded up to a vector) and every set is pooled from
// there; nothing of [B, M, N, K] is written in the forward. The FwFM sums are small matrix
// products, T = Q E ([N, N] x [N, Kp]) and the weight gradient sum_k (g e_i) e_j, computed in
// register tiles of kTileRows rows x kTileVecs vectors (kernels/cpu/vec.h).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "half.h"
#include "index.h"
#include "pooling_isa.h"
#include "row_split.h"
#include "vec.h"

namespace fastme {
namespace cpu {
namespace FASTME_CPU_ISA_NS {
namespace {

using kernels::DType;
using kernels::IndexArgs;

// Storage type of a table dtype and its accumulation type.
struct F32 {
  using store = float;
  using acc = float;
  static float in(float x) { return x; }
  static float out(float x) { return x; }
};
struct F64 {
  using store = double;
  using acc = double;
  static double in(double x) { return x; }
  static double out(double x) { return x; }
};
struct BF16 {
  using store = std::uint16_t;
  using acc = float;
  static float in(std::uint16_t x) { return bf16_to_float(x); }
  static std::uint16_t out(float x) { return float_to_bf16(x); }
};
struct FP16 {
  using store = std::uint16_t;
  using acc = float;
  static float in(std::uint16_t x) { return fp16_to_float(x); }
  static std::uint16_t out(float x) { return float_to_fp16(x); }
};

// Calls f(Codec{}) with the codec of `dtype`.
template <typename F>
void with_codec(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat64:
      return f(F64{});
    case DType::kBFloat16:
      return f(BF16{});
    case DType::kFloat16:
      return f(FP16{});
    default:
      return f(F32{});
  }
}

// A zero-filled, 64-byte aligned scratch array of one thread.
template <typename A>
class Scratch {
 public:
  explicit Scratch(long long n, bool zero = true) {
    const size_t bytes = ((std::max<long long>(n, 1) * sizeof(A) + 63) / 64) * 64;
    data_ = static_cast<A*>(std::aligned_alloc(64, bytes));
    if (data_ != nullptr && zero) std::memset(data_, 0, bytes);
  }
  ~Scratch() { std::free(data_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* get() const { return data_; }

 private:
  A* data_;
};

template <typename A>
constexpr long long lanes() {
  return kVecBytes / static_cast<long long>(sizeof(A));
}

inline long long round_up(long long n, long long to) { return (n + to - 1) / to * to; }

// Calls f(std::integral_constant<int, value>{}) for value in [1, Max].
template <int Max, typename F>
inline void with_constant(long long value, F&& f) {
  if constexpr (Max >= 1) {
    if (value == Max) return f(std::integral_constant<int, Max>{});
    with_constant<Max - 1>(value, f);
  }
}

// acc[r][c] += sum_{p in [p0, p1)} a[r * lda + p] * b[p * ldb + c * lanes]: rows of `a` broadcast,
// vectors of `b`'s rows, R x CV accumulators held in registers.
template <int R, int CV, typename A, typename V>
inline void tile_product(const A* a, long long lda, const A* b, long long ldb, long long p0,
                         long long p1, V (&acc)[R][CV]) {
  constexpr long long L = lanes<A>();
  for (long long p = p0; p < p1; ++p) {
    V bv[CV];
#pragma GCC unroll 8
    for (int c = 0; c < CV; ++c) bv[c] = load_vec<V>(b + p * ldb + c * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const A s = a[r * lda + p];
#pragma GCC unroll 8
      for (int c = 0; c < CV; ++c) acc[r][c] += s * bv[c];
    }
  }
}

// The product a [rows, p] x b [p, vecs * lanes] in register tiles. Row block i0 contracts over
// [p_begin(i0), p_end) and covers vector columns [col_begin(i0), vecs); each tile's accumulators
// come from init(acc, i0, c0) and go to finish(acc, i0, c0) (acc is V[R][CV]).
template <typename A, typename PBegin, typename ColBegin, typename Init, typename Finish>
void tiled_product(long long rows, long long vecs, const A* a, long long lda, const A* b,
                   long long ldb, PBegin&& p_begin, long long p_end, ColBegin&& col_begin,
                   Init&& init, Finish&& finish) {
  using V = typename Vec<A>::type;
  constexpr long long L = lanes<A>();
  for (long long i0 = 0; i0 < rows; i0 += kTileRows) {
    const long long p0 = p_begin(i0);
    const A* a_rows = a + i0 * lda;
    with_constant<kTileRows>(std::min<long long>(kTileRows, rows - i0), [&](auto r_const) {
      constexpr int R = decltype(r_const)::value;
      for (long long c0 = col_begin(i0); c0 < vecs; c0 += kTileVecs) {
        with_constant<kTileVecs>(std::min<long long>(kTileVecs, vecs - c0), [&](auto c_const) {
          constexpr int CV = decltype(c_const)::value;
          V acc[R][CV];
          init(acc, i0, c0);
          tile_product<R, CV>(a_rows, lda, b + c0 * L, ldb, p0, p_end, acc);
          finish(acc, i0, c0);
        });
      }
    });
  }
}

// Every field's row of sample b, all sets, into E [M, N, Kp] (padding stays zero); with ET, also
// transposed, ET [M, K, Np].
template <typename C>
void gather_sample(const typename C::store* table, const IndexArgs& ix, long long b, long long M,
                   long long K, long long Kp, typename C::acc* E, typename C::acc* ET = nullptr,
                   long long Np = 0) {
  const long long N = ix.num_fields;
  for (long long i = 0; i < N; ++i) {
    const typename C::store* row = table + global_row(ix, b, i) * M * K;
    for (long long m = 0; m < M; ++m) {
      typename C::acc* dst = E + (m * N + i) * Kp;
      for (long long k = 0; k < K; ++k) dst[k] = C::in(row[m * K + k]);
      if (ET != nullptr)
        for (long long k = 0; k < K; ++k) ET[(m * K + k) * Np + i] = dst[k];
    }
  }
}

template <typename C>
void fm_forward_impl(int threads, const void* table_, const IndexArgs& ix, long long M,
                     long long K, void* out_) {
  using A = typename C::acc;
  using V = typename Vec<A>::type;
  constexpr long long L = lanes<A>();
  const auto* table = static_cast<const typename C::store*>(table_);
  auto* out = static_cast<typename C::store*>(out_);
  const long long B = ix.batch, N = ix.num_fields, Kp = round_up(K, L);
#pragma omp parallel num_threads(threads)
  {
    Scratch<A> E(M * N * Kp), pooled(Kp);
#pragma omp for schedule(static)
    for (long long b = 0; b < B; ++b) {
      gather_sample<C>(table, ix, b, M, K, Kp, E.get());
      for (long long m = 0; m < M; ++m) {
        const A* e = E.get() + m * N * Kp;
        for (long long k = 0; k < Kp; k += L) {
          V sum = {}, squares = {};
          for (long long i = 0; i < N; ++i) {
            const V v = load_vec<V>(e + i * Kp + k);
            sum += v;
            squares += v * v;
          }
          store_vec(pooled.get() + k, A(0.5) * (sum * sum - squares));
        }
        for (long long k = 0; k < K; ++k) out[(b * M + m) * K + k] = C::out(pooled.get()[k]);
      }
    }
  }
}

// The backwards' frame. grad_table is zero-filled; the samples, in `chunks` fixed ranges, are
// taken a block of ranges at a time (the threads share a block's ranges) and work(b, chunk, de)
// writes the gradient of sample b's gathered rows into de [N, M * K] (pair-major, as table rows);
// then each thread adds the pairs of the block whose rows are in its range, in ascending pair
// order. A block is about 2 MiB of row gradients (in cache): no [B, M, N, K] gradient is written, and few
// blocks mean few barriers (on a loaded machine a barrier waits for a thread that lost its core).
template <typename A, typename MakeWork>
void backward_blocks(int threads, const IndexArgs& ix, long long row_elems, const long long* rows,
                     const long long* bounds, int buckets, long long chunks, A* grad_table,
                     MakeWork&& make_work) {
  const long long B = ix.batch, N = ix.num_fields;
  const long long chunk_size = (B + chunks - 1) / chunks;
  const long long sample_bytes = std::max<long long>(1, N * row_elems * sizeof(A));
  const long long per_block = std::max<long long>(threads, (2LL << 20) / (sample_bytes * chunk_size));
  const long long block_samples = std::min(B, per_block * chunk_size);
  Scratch<A> block(block_samples * N * row_elems, /*zero=*/false);
#pragma omp parallel num_threads(threads)
  {
    zero_rows(grad_table, ix.num_rows, row_elems);
    auto work = make_work();
    for (long long first = 0; first < chunks; first += per_block) {
      const long long b0 = std::min(B, first * chunk_size);
      const long long b1 = std::min(B, (first + per_block) * chunk_size);
      const long long last = std::min(chunks, first + per_block);
#pragma omp for schedule(static)
      for (long long chunk = first; chunk < last; ++chunk) {
        const long long end = std::min(B, (chunk + 1) * chunk_size);
        for (long long b = chunk * chunk_size; b < end; ++b)
          work(b, chunk, block.get() + (b - b0) * N * row_elems);
      }
#pragma omp for schedule(static, 1)
      for (int q = 0; q < buckets; ++q) {
        const long long lo = bounds[q], hi = bounds[q + 1];
        for (long long p = b0 * N; p < b1 * N; ++p) {
          const long long r = rows[p];
          if (r < lo || r >= hi) continue;
          add_run(grad_table + r * row_elems, block.get() + (p - b0 * N) * row_elems, row_elems);
        }
      }
    }
  }
}

template <typename C>
void fm_backward_impl(int threads, const void* grad_, const void* table_, const IndexArgs& ix,
                      long long M, long long K, const long long* rows, const long long* bounds,
                      int buckets, long long chunks, void* grad_table) {
  using A = typename C::acc;
  using V = typename Vec<A>::type;
  constexpr long long L = lanes<A>();
  const auto* grad = static_cast<const typename C::store*>(grad_);
  const auto* table = static_cast<const typename C::store*>(table_);
  const long long N = ix.num_fields, Kp = round_up(K, L);
  backward_blocks(
      threads, ix, M * K, rows, bounds, buckets, chunks, static_cast<A*>(grad_table), [&] {
        return [&, E = std::make_shared<Scratch<A>>(M * N * Kp),
                g = std::make_shared<Scratch<A>>(Kp), sum = std::make_shared<Scratch<A>>(Kp),
                de = std::make_shared<Scratch<A>>(Kp)](long long b, long long, A* out) {
          gather_sample<C>(table, ix, b, M, K, Kp, E->get());
          for (long long m = 0; m < M; ++m) {
            const A* e = E->get() + m * N * Kp;
            for (long long k = 0; k < K; ++k) g->get()[k] = C::in(grad[(b * M + m) * K + k]);
            for (long long k = 0; k < Kp; k += L) {
              V s = {};
              for (long long i = 0; i < N; ++i) s += load_vec<V>(e + i * Kp + k);
              store_vec(sum->get() + k, s);
            }
            for (long long i = 0; i < N; ++i) {
              for (long long k = 0; k < Kp; k += L)
                store_vec(de->get() + k, load_vec<V>(g->get() + k) *
                                             (load_vec<V>(sum->get() + k) -
                                              load_vec<V>(e + i * Kp + k)));
              std::memcpy(out + (i * M + m) * K, de->get(), sizeof(A) * K);
            }
          }
        };
      });
}

template <typename C>
void fwfm_forward_impl(int threads, const void* table_, const IndexArgs& ix, long long M,
                       long long K, const void* q_upper_, void* out_) {
  using A = typename C::acc;
  using V = typename Vec<A>::type;
  constexpr long long L = lanes<A>();
  const auto* table = static_cast<const typename C::store*>(table_);
  const auto* q_upper = static_cast<const A*>(q_upper_);
  auto* out = static_cast<typename C::store*>(out_);
  const long long B = ix.batch, N = ix.num_fields, Kp = round_up(K, L);
#pragma omp parallel num_threads(threads)
  {
    Scratch<A> E(M * N * Kp), pooled(Kp);
#pragma omp for schedule(static)
    for (long long b = 0; b < B; ++b) {
      gather_sample<C>(table, ix, b, M, K, Kp, E.get());
      for (long long m = 0; m < M; ++m) {
        const A* e = E.get() + m * N * Kp;
        A* p = pooled.get();
        std::memset(p, 0, sizeof(A) * Kp);
        // T = Q e over j >= i (Q is zero below the diagonal), then pooled += e_i * T_i.
        tiled_product(
            N, Kp / L, q_upper + m * N * N, N, e, Kp, [](long long i0) { return i0; }, N,
            [](long long) { return 0LL; },
            [](auto& acc, long long, long long) {
              for (auto& row : acc)
                for (auto& v : row) v = V{};
            },
            [&](auto& acc, long long i0, long long c0) {
              constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>, 0>;
              constexpr int CV = std::extent_v<std::remove_reference_t<decltype(acc)>, 1>;
              for (int c = 0; c < CV; ++c) {
                const long long k = (c0 + c) * L;
                V s = load_vec<V>(p + k);
                for (int r = 0; r < R; ++r) s += load_vec<V>(e + (i0 + r) * Kp + k) * acc[r][c];
                store_vec(p + k, s);
              }
            });
        for (long long k = 0; k < K; ++k) out[(b * M + m) * K + k] = C::out(p[k]);
      }
    }
  }
}

template <typename C>
void fwfm_backward_impl(int threads, const void* grad_, const void* table_, const IndexArgs& ix,
                        long long M, long long K, const void* q_full_, const long long* rows,
                        const long long* bounds, int buckets, long long chunks, void* grad_table,
                        void* grad_weight_) {
  using A = typename C::acc;
  using V = typename Vec<A>::type;
  constexpr long long L = lanes<A>();
  const auto* grad = static_cast<const typename C::store*>(grad_);
  const auto* table = static_cast<const typename C::store*>(table_);
  const auto* q_full = static_cast<const A*>(q_full_);
  auto* grad_weight = static_cast<A*>(grad_weight_);
  const long long N = ix.num_fields, Kp = round_up(K, L), Np = round_up(N, L);
  // Per chunk of samples, the weight gradient's upper triangle (row i, columns from the vector
  // holding i on), rows padded to Np.
  const long long plane = M * N * Np;
  Scratch<A> partial(chunks * plane);
  // One thread's buffers: E [M, N, Kp], ET [M, K, Np], g, g * e_i [N, Kp], grad e_i [N, Kp].
  struct Buffers {
    Scratch<A> E, ET, g, ge, de;
    Buffers(long long M, long long N, long long K, long long Kp, long long Np)
        : E(M * N * Kp), ET(M * K * Np), g(Kp), ge(N * Kp), de(N * Kp) {}
  };
  backward_blocks(
      threads, ix, M * K, rows, bounds, buckets, chunks, static_cast<A*>(grad_table), [&] {
        return [&, buf = std::make_shared<Buffers>(M, N, K, Kp, Np)](long long b, long long chunk,
                                                                      A* out) {
          A* weight_sum = partial.get() + chunk * plane;
          A *E = buf->E.get(), *ET = buf->ET.get(), *g = buf->g.get(), *ge = buf->ge.get(),
            *de = buf->de.get();
          gather_sample<C>(table, ix, b, M, K, Kp, E, ET, Np);
          for (long long m = 0; m < M; ++m) {
            const A* e = E + m * N * Kp;
            for (long long k = 0; k < K; ++k) g[k] = C::in(grad[(b * M + m) * K + k]);
            // grad e_i = g * (Q_full e)_i
            tiled_product(
                N, Kp / L, q_full + m * N * N, N, e, Kp, [](long long) { return 0LL; }, N,
                [](long long) { return 0LL; },
                [](auto& acc, long long, long long) {
                  for (auto& row : acc)
                    for (auto& v : row) v = V{};
                },
                [&](auto& acc, long long i0, long long c0) {
                  constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>, 0>;
                  constexpr int CV = std::extent_v<std::remove_reference_t<decltype(acc)>, 1>;
                  for (int c = 0; c < CV; ++c) {
                    const V gv = load_vec<V>(g + (c0 + c) * L);
                    for (int r = 0; r < R; ++r)
                      store_vec(de + (i0 + r) * Kp + (c0 + c) * L, gv * acc[r][c]);
                  }
                });
            for (long long i = 0; i < N; ++i)
              std::memcpy(out + (i * M + m) * K, de + i * Kp, sizeof(A) * K);
            // weight gradient += (g e_i) . e_j over k, for j >= i (it is symmetric)
            for (long long i = 0; i < N; ++i)
              for (long long k = 0; k < Kp; k += L)
                store_vec(ge + i * Kp + k, load_vec<V>(g + k) * load_vec<V>(e + i * Kp + k));
            A* w = weight_sum + m * N * Np;
            tiled_product(
                N, Np / L, ge, Kp, ET + m * K * Np, Np, [](long long) { return 0LL; }, K,
                [](long long i0) { return i0 / lanes<A>(); },
                [&](auto& acc, long long i0, long long c0) {
                  constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>, 0>;
                  constexpr int CV = std::extent_v<std::remove_reference_t<decltype(acc)>, 1>;
                  for (int r = 0; r < R; ++r)
                    for (int c = 0; c < CV; ++c)
                      acc[r][c] = load_vec<V>(w + (i0 + r) * Np + (c0 + c) * L);
                },
                [&](auto& acc, long long i0, long long c0) {
                  constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>, 0>;
                  constexpr int CV = std::extent_v<std::remove_reference_t<decltype(acc)>, 1>;
                  for (int r = 0; r < R; ++r)
                    for (int c = 0; c < CV; ++c)
                      store_vec(w + (i0 + r) * Np + (c0 + c) * L, acc[r][c]);
                });
          }
        };
      });
  // The chunks' sums in chunk order, mirrored below the diagonal.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long mi = 0; mi < M * N; ++mi) {
    const long long m = mi / N, i = mi % N;
    for (long long j = 0; j < N; ++j) {
      const long long lo = std::min(i, j), hi = std::max(i, j);
      A s = 0;
      for (long long chunk = 0; chunk < chunks; ++chunk)
        s += partial.get()[chunk * plane + (m * N + lo) * Np + hi];
      grad_weight[(m * N + i) * N + j] = s;
    }
  }
}

}  // namespace

void fm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix, int num_sets,
                int dim, void* out) {
  with_codec(dtype, [&](auto codec) {
    fm_forward_impl<decltype(codec)>(threads, table, ix, num_sets, dim, out);
  });
}

void fm_backward(int threads, DType dtype, const void* grad, const void* table,
                 const IndexArgs& ix, int num_sets, int dim, const long long* rows,
                 const long long* bounds, int buckets, long long chunks, void* grad_table) {
  with_codec(dtype, [&](auto codec) {
    fm_backward_impl<decltype(codec)>(threads, grad, table, ix, num_sets, dim, rows, bounds,
                                      buckets, chunks, grad_table);
  });
}

void fwfm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                  int num_sets, int dim, const void* q_upper, void* out) {
  with_codec(dtype, [&](auto codec) {
    fwfm_forward_impl<decltype(codec)>(threads, table, ix, num_sets, dim, q_upper, out);
  });
}

void fwfm_backward(int threads, DType dtype, const void* grad, const void* table,
                   const IndexArgs& ix, int num_sets, int dim, const void* q_full,
                   const long long* rows, const long long* bounds, int buckets, long long chunks,
                   void* grad_table, void* grad_weight) {
  with_codec(dtype, [&](auto codec) {
    fwfm_backward_impl<decltype(codec)>(threads, grad, table, ix, num_sets, dim, q_full, rows,
                                        bounds, buckets, chunks, grad_table, grad_weight);
  });
}

}  // namespace FASTME_CPU_ISA_NS
}  // namespace cpu
}  // namespace fastme
