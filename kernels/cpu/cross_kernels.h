// The CPU cross network's elementwise passes for the ISA of the including translation unit
// (kernels/cpu/cross_<isa>.cpp defines FASTME_CPU_ISA_NS and is compiled with that ISA's flags).
//
// Each pass streams rows of D elements (one sample of one set) once, in vectors of the ISA's
// width (kernels/cpu/vec.h), with OpenMP over the rows; the GEMMs between the passes are torch's.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cross_isa.h"
#include "half.h"
#include "vec.h"

namespace fastme {
namespace cpu {
namespace FASTME_CPU_ISA_NS {
namespace {

using kernels::DType;

template <typename A>
constexpr long long lanes() {
  return kVecBytes / static_cast<long long>(sizeof(A));
}

// Storage type of a dtype, its accumulation type and full-vector loads / stores of it.
struct F32 {
  using store = float;
  using acc = float;
  static float in(float x) { return x; }
  static float out(float x) { return x; }
  static VecF load(const float* p) { return load_vec<VecF>(p); }
  static void save(float* p, VecF v) { store_vec(p, v); }
};
struct F64 {
  using store = double;
  using acc = double;
  static double in(double x) { return x; }
  static double out(double x) { return x; }
  static VecD load(const double* p) { return load_vec<VecD>(p); }
  static void save(double* p, VecD v) { store_vec(p, v); }
};
// bfloat16 <-> float as whole vectors, rounding as float_to_bf16 (kernels/cpu/half.h) does.
typedef std::uint32_t VecU __attribute__((vector_size(kVecBytes)));
typedef std::uint16_t VecH __attribute__((vector_size(kVecBytes / 2)));
struct BF16 {
  using store = std::uint16_t;
  using acc = float;
  static float in(std::uint16_t x) { return bf16_to_float(x); }
  static std::uint16_t out(float x) { return float_to_bf16(x); }
  static VecF load(const std::uint16_t* p) {
    const VecU wide = __builtin_convertvector(load_vec<VecH>(p), VecU) << 16;
    VecF f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
  }
  static void save(std::uint16_t* p, VecF f) {
    VecU u;
    std::memcpy(&u, &f, sizeof u);
    const VecU rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const VecU quiet_nan = (u >> 16) | 0x40u;
    const VecU bits = ((u & 0x7fffffffu) > 0x7f800000u) ? quiet_nan : rounded;
    store_vec(p, __builtin_convertvector(bits, VecH));
  }
};
struct FP16 {  // rare on CPUs: element by element
  using store = std::uint16_t;
  using acc = float;
  static float in(std::uint16_t x) { return fp16_to_float(x); }
  static std::uint16_t out(float x) { return float_to_fp16(x); }
  static VecF load(const std::uint16_t* p) {
    float tmp[lanes<float>()];
    for (long long i = 0; i < lanes<float>(); ++i) tmp[i] = in(p[i]);
    return load_vec<VecF>(tmp);
  }
  static void save(std::uint16_t* p, VecF v) {
    float tmp[lanes<float>()];
    store_vec(tmp, v);
    for (long long i = 0; i < lanes<float>(); ++i) p[i] = out(tmp[i]);
  }
};

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

// The codec of the accumulation type itself (the dx0 accumulator).
template <typename C>
using AccCodec = std::conditional_t<std::is_same_v<typename C::acc, double>, F64, F32>;

// n elements at p (a full vector when Full, else n < lanes, zero-padded).
template <typename C, bool Full>
inline typename Vec<typename C::acc>::type load(const typename C::store* p, long long n) {
  using A = typename C::acc;
  if constexpr (Full) {
    return C::load(p);
  } else {
    A tmp[lanes<A>()] = {};
    for (long long i = 0; i < n; ++i) tmp[i] = C::in(p[i]);
    return load_vec<typename Vec<A>::type>(tmp);
  }
}

template <typename C, bool Full>
inline void save(typename C::store* p, typename Vec<typename C::acc>::type v, long long n) {
  using A = typename C::acc;
  if constexpr (Full) {
    C::save(p, v);
  } else {
    A tmp[lanes<A>()];
    store_vec(tmp, v);
    for (long long i = 0; i < n; ++i) p[i] = C::out(tmp[i]);
  }
}

// Calls step(std::true_type, d, lanes) for every full vector of a row of D elements and
// step(std::false_type, d, rest) for its tail.
template <typename A, typename Step>
inline void over_row(long long D, Step&& step) {
  constexpr long long L = lanes<A>();
  long long d = 0;
  for (; d + L <= D; d += L) step(std::true_type{}, d, L);
  if (d < D) step(std::false_type{}, d, D - d);
}

// For passes whose output at a position depends only on inputs at that position: every full
// vector of the row, then the tail as one more full vector ending at D, overlapping the last one
// (the same values are stored twice) instead of element by element, which cost ~25% of a bf16
// pass at D=390. The tail is computed first, so that an output that is also an input (x_l
// updated in place) is read before any store. Rows shorter than a vector go element by element.
// compute(full, d, n) returns the vector at [d, d + n) (over_row's arguments); put(full, d, n, v)
// stores it.
template <typename A, typename Compute, typename Put>
inline void map_row(long long D, Compute&& compute, Put&& put) {
  constexpr long long L = lanes<A>();
  if (D >= L && D % L != 0) {
    const std::true_type full{};
    const auto tail = compute(full, D - L, L);
    for (long long d = 0; d + L <= D; d += L) put(full, d, L, compute(full, d, L));
    put(full, D - L, L, tail);
    return;
  }
  over_row<A>(D, [&](auto full, long long d, long long n) { put(full, d, n, compute(full, d, n)); });
}

template <typename C>
void forward_impl(int threads, long long M, long long B, long long D, const void* x0_,
                  long long x0_sm, long long x0_sb, const void* z_, const void* x_,
                  long long x_sm, long long x_sb, const void* bias_, void* out_, long long out_sm,
                  long long out_sb) {
  using S = typename C::store;
  using A = typename C::acc;
  const auto* x0 = static_cast<const S*>(x0_);
  const auto* z = static_cast<const S*>(z_);
  const auto* x = static_cast<const S*>(x_);
  const auto* bias = static_cast<const S*>(bias_);
  auto* out = static_cast<S*>(out_);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long r = 0; r < M * B; ++r) {
    const long long m = r / B, b = r % B;
    const S* x0r = x0 + m * x0_sm + b * x0_sb;
    const S* zr = z + r * D;
    const S* xr = x + m * x_sm + b * x_sb;
    const S* br = bias + m * D;
    S* outr = out + m * out_sm + b * out_sb;
    map_row<A>(
        D,
        [&](auto full, long long d, long long n) {
          constexpr bool F = decltype(full)::value;
          return load<C, F>(x0r + d, n) * (load<C, F>(zr + d, n) + load<C, F>(br + d, n)) +
                 load<C, F>(xr + d, n);
        },
        [&](auto full, long long d, long long n, auto v) {
          save<C, decltype(full)::value>(outr + d, v, n);
        });
  }
}

template <typename C>
void backward_impl(int threads, long long M, long long B, long long D, long long chunk,
                   const void* g_, long long g_sm, long long g_sb, const void* h_, void* g_out_,
                   const void* x0_, long long x0_sm, long long x0_sb, const void* z_,
                   const void* bias_, void* u_, void* dx0_acc_, bool accumulate,
                   void* grad_bias_) {
  using S = typename C::store;
  using A = typename C::acc;
  using AC = AccCodec<C>;
  const auto* g = static_cast<const S*>(g_);
  const auto* h = static_cast<const S*>(h_);
  auto* g_out = static_cast<S*>(g_out_);
  const auto* x0 = static_cast<const S*>(x0_);
  const auto* z = static_cast<const S*>(z_);
  const auto* bias = static_cast<const S*>(bias_);
  auto* u = static_cast<S*>(u_);
  auto* dx0 = static_cast<A*>(dx0_acc_);
  auto* grad_bias = static_cast<S*>(grad_bias_);
  const long long chunks = std::max<long long>(1, (B + chunk - 1) / chunk);
  std::vector<A> partial(static_cast<size_t>(M * chunks * D), A(0));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long t = 0; t < M * chunks; ++t) {
    const long long m = t / chunks, c = t % chunks;
    A* db = partial.data() + t * D;
    const S* br = bias + m * D;
    for (long long b = c * chunk; b < std::min(B, (c + 1) * chunk); ++b) {
      const long long r = m * B + b;
      const S* gr = g + m * g_sm + b * g_sb;
      const S* x0r = x0 + m * x0_sm + b * x0_sb;
      over_row<A>(D, [&](auto full, long long d, long long n) {
        constexpr bool F = decltype(full)::value;
        auto grad = load<C, F>(gr + d, n);
        if (h != nullptr) grad += load<C, F>(h + r * D + d, n);
        if (g_out != nullptr) save<C, F>(g_out + r * D + d, grad, n);
        const auto uv = grad * load<C, F>(x0r + d, n);
        save<C, F>(u + r * D + d, uv, n);
        auto dx = grad * (load<C, F>(z + r * D + d, n) + load<C, F>(br + d, n));
        if (accumulate) dx += load<AC, F>(dx0 + r * D + d, n);
        save<AC, F>(dx0 + r * D + d, dx, n);
        save<AC, F>(db + d, load<AC, F>(db + d, n) + uv, n);
      });
    }
  }
  // The ranges' sums in order, per (set, element).
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long md = 0; md < M * D; ++md) {
    const long long m = md / D, d = md % D;
    A sum = 0;
    for (long long c = 0; c < chunks; ++c) sum += partial[(m * chunks + c) * D + d];
    grad_bias[md] = C::out(sum);
  }
}

template <typename C>
void grad_x0_impl(int threads, long long M, long long B, long long D, const void* dx0_acc_,
                  const void* g_, long long g_sm, long long g_sb, const void* h_, void* out_,
                  long long out_sm, long long out_sb) {
  using S = typename C::store;
  using A = typename C::acc;
  using AC = AccCodec<C>;
  const auto* dx0 = static_cast<const A*>(dx0_acc_);
  const auto* g = static_cast<const S*>(g_);
  const auto* h = static_cast<const S*>(h_);
  auto* out = static_cast<S*>(out_);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long r = 0; r < M * B; ++r) {
    const long long m = r / B, b = r % B;
    const S* gr = g + m * g_sm + b * g_sb;
    S* outr = out + m * out_sm + b * out_sb;
    map_row<A>(
        D,
        [&](auto full, long long d, long long n) {
          constexpr bool F = decltype(full)::value;
          auto v = load<AC, F>(dx0 + r * D + d, n) + load<C, F>(gr + d, n);
          if (h != nullptr) v += load<C, F>(h + r * D + d, n);
          return v;
        },
        [&](auto full, long long d, long long n, auto v) {
          save<C, decltype(full)::value>(outr + d, v, n);
        });
  }
}

// out[b] = mean over m of relu(z_m[b] + bias[m]): the eval per-set projection's epilogue (its
// GEMMs are torch's, without bias). z holds M pointers to [B, D] rows; bias [M, D] and the sums in
// the accumulation type, the sets summed in order and divided by M, rounded once.
template <typename C>
void relu_mean_impl(int threads, long long M, long long B, long long D, const void* const* z_,
                    const void* bias_, void* out_) {
  using S = typename C::store;
  using A = typename C::acc;
  using AC = AccCodec<C>;
  using V = typename Vec<A>::type;
  const auto* bias = static_cast<const A*>(bias_);
  auto* out = static_cast<S*>(out_);
  const A scale = A(M);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long long b = 0; b < B; ++b) {
    over_row<A>(D, [&](auto full, long long d, long long n) {
      constexpr bool F = decltype(full)::value;
      const V zero = {};
      V sum = {};
      for (long long m = 0; m < M; ++m) {
        const S* zr = static_cast<const S*>(z_[m]) + b * D;
        const V v = load<C, F>(zr + d, n) + load<AC, F>(bias + m * D + d, n);
        sum += v < zero ? zero : v;  // NaN stays NaN, as torch.relu
      }
      save<C, F>(out + b * D + d, sum / scale, n);
    });
  }
}

}  // namespace

void cross_layer_forward(int threads, DType dtype, long long M, long long B, long long D,
                         const void* x0, long long x0_sm, long long x0_sb, const void* z,
                         const void* x, long long x_sm, long long x_sb, const void* bias,
                         void* out, long long out_sm, long long out_sb) {
  with_codec(dtype, [&](auto codec) {
    forward_impl<decltype(codec)>(threads, M, B, D, x0, x0_sm, x0_sb, z, x, x_sm, x_sb, bias,
                                  out, out_sm, out_sb);
  });
}

void cross_layer_backward(int threads, DType dtype, long long M, long long B, long long D,
                          long long chunk, const void* g, long long g_sm, long long g_sb,
                          const void* h, void* g_out, const void* x0, long long x0_sm,
                          long long x0_sb, const void* z, const void* bias, void* u,
                          void* dx0_acc, bool accumulate, void* grad_bias) {
  with_codec(dtype, [&](auto codec) {
    backward_impl<decltype(codec)>(threads, M, B, D, chunk, g, g_sm, g_sb, h, g_out, x0, x0_sm,
                                   x0_sb, z, bias, u, dx0_acc, accumulate, grad_bias);
  });
}

void cross_grad_x0(int threads, DType dtype, long long M, long long B, long long D,
                   const void* dx0_acc, const void* g, long long g_sm, long long g_sb,
                   const void* h, void* grad_x0, long long gx_sm, long long gx_sb) {
  with_codec(dtype, [&](auto codec) {
    grad_x0_impl<decltype(codec)>(threads, M, B, D, dx0_acc, g, g_sm, g_sb, h, grad_x0, gx_sm,
                                  gx_sb);
  });
}

void set_relu_mean(int threads, DType dtype, long long M, long long B, long long D,
                   const void* const* z, const void* bias, void* out) {
  with_codec(dtype, [&](auto codec) {
    relu_mean_impl<decltype(codec)>(threads, M, B, D, z, bias, out);
  });
}

}  // namespace FASTME_CPU_ISA_NS
}  // namespace cpu
}  // namespace fastme
