// Per-set DCNv2 cross network: x_{l+1} = x0 * (W_l x_l + b_l) + x_l, all L layers and M sets.
//
// Each layer is one batched GEMM launch over the M sets (blockIdx.z) with the whole layer update
// fused into its epilogue: x_l W^T comes out of the tensor cores, and x0, x_l, b are read once by
// the epilogue, which writes x_{l+1} (and z_l = W_l x_l + b_l when the backward will need it).
// The backward per layer, with G = dL/dx_{l+1} and H = G * x0 (= dL/dz_l):
//   dx0 += G * z_l;  dW_l = H^T x_l (split over the batch, partials reduced in a fixed order);
//   db_l = sum_b H (row sums of the same GEMM's A operand);  dL/dx_l = G + H W_l (+ dx0 at l = 0).
#include "gemm.cuh"
#include "cross.h"

namespace fastme {
namespace kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct ForwardEpilogue {
  const T* x0;
  const T* xl;
  const T* bias;  // this layer's [M, D]
  T* next;        // x_{l+1}
  T* z;           // z_l, or null
  long long md;   // M * D: row stride of x
  long long dim;
  __device__ void operator()(long long m, long long, long long b, long long n, acc_t<T> acc) const {
    const long long idx = b * md + m * dim + n;
    const acc_t<T> zv = acc + to_acc(bias[m * dim + n]);
    next[idx] = from_acc<T>(to_acc(x0[idx]) * zv + to_acc(xl[idx]));
    if (z != nullptr) z[idx] = from_acc<T>(zv);
  }
};

// dL/dx_l = G + H W (+ dx0). `grad` may be the output buffer itself: each element is read and
// written by the same thread only.
template <typename T>
struct InputGradEpilogue {
  const T* grad;
  const acc_t<T>* dx0;  // added at layer 0, else null
  T* out;
  long long md;
  long long dim;
  __device__ void operator()(long long m, long long, long long b, long long n, acc_t<T> acc) const {
    const long long idx = b * md + m * dim + n;
    acc_t<T> v = acc + to_acc(grad[idx]);
    if (dx0 != nullptr) v += dx0[idx];
    out[idx] = from_acc<T>(v);
  }
};

// Weight-gradient partials: w[m, split, n, k] and, from the row sums of H^T, b[m, split, n].
template <typename T>
struct WeightGradEpilogue {
  acc_t<T>* w;
  acc_t<T>* b;
  long long splits;
  long long dim;
  __device__ void operator()(long long m, long long split, long long n, long long k,
                             acc_t<T> acc) const {
    w[((m * splits + split) * dim + n) * dim + k] = acc;
  }
  __device__ void rowsum(long long m, long long split, long long n, acc_t<T> sum) const {
    b[(m * splits + split) * dim + n] = sum;
  }
};

// h = g * x0;  dx0 = (first ? 0 : dx0) + g * z.
template <typename T>
__global__ void __launch_bounds__(kThreads)
cross_backward_prep_kernel(const T* __restrict__ g, const T* __restrict__ x0,
                           const T* __restrict__ z, T* __restrict__ h, acc_t<T>* __restrict__ dx0,
                           long long count, bool first) {
  for (long long e = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; e < count;
       e += static_cast<long long>(gridDim.x) * kThreads) {
    const acc_t<T> gv = to_acc(g[e]);
    h[e] = from_acc<T>(gv * to_acc(x0[e]));
    const acc_t<T> add = gv * to_acc(z[e]);
    dx0[e] = first ? add : dx0[e] + add;
  }
}

}  // namespace

void cross_forward(const Launch& launch, DType dtype, bool allow_tf32, const void* x0,
                   const void* weight, const void* bias, long long batch, int num_sets, int dim,
                   int layers, void* out, void* xs, void* zs, bool save) {
  if (batch == 0 || num_sets == 0 || dim == 0 || layers == 0) return;
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const long long md = static_cast<long long>(num_sets) * dim;
    const long long plane = batch * md;  // one [B, M, D] tensor
    const long long dd = static_cast<long long>(dim) * dim;
    const T* x0p = static_cast<const T*>(x0);
    T* outp = static_cast<T*>(out);
    T* xsp = static_cast<T*>(xs);
    const T* prev = x0p;
    for (int l = 0; l < layers; ++l) {
      // Without saving, x_l alternate between out and one scratch plane so that x_L lands in out
      // and no layer overwrites its own input.
      T* next = l == layers - 1 ? outp
                : save          ? xsp + l * plane
                : ((layers - 1 - l) % 2 == 0 ? outp : xsp);
      GemmArgs<T> args{prev, md, dim,
                       static_cast<const T*>(weight) + static_cast<long long>(l) * num_sets * dd, dim, dd,
                       batch, dim, dim, 1, round_up_tile(dim)};
      ForwardEpilogue<T> epi{x0p, prev, static_cast<const T*>(bias) + l * md, next,
                             save ? static_cast<T*>(zs) + l * plane : nullptr, md, dim};
      // x_l W^T: A = x_l row-major (ld M*D), B(k, n) = W[n, k]: column-major with ld D.
      gemm<T, true, true, false>(launch, args, num_sets, allow_tf32, epi, "cross_forward_gemm");
      prev = next;
    }
  });
}

SplitPlan cross_weight_grad_plan(long long batch, int num_sets, int dim, int device) {
  DeviceGuard guard(device);
  if (batch <= 0) return SplitPlan{1, kTileK};
  const long long tiles = ceil_div(dim, kTileM) * ceil_div(dim, kTileN) * (num_sets > 0 ? num_sets : 1);
  // Enough blocks for two waves, each slice at least 256 samples, at most 65535 grid slices.
  long long splits = ceil_div(2LL * sm_count(device), tiles);
  const long long most = ceil_div(batch, 256);
  splits = splits < most ? splits : most;
  const long long grid_most = 65535 / (num_sets > 0 ? num_sets : 1);
  splits = splits < grid_most ? splits : grid_most;
  splits = splits > 1 ? splits : 1;
  const long long per = ceil_div(ceil_div(batch, splits), kTileK) * kTileK;
  return SplitPlan{ceil_div(batch, per), per};
}

void cross_backward(const Launch& launch, DType dtype, bool allow_tf32, const void* grad_out,
                    const void* x0, const void* weight, const void* xs, const void* zs,
                    long long batch, int num_sets, int dim, int layers, void* grad_x0,
                    void* grad_weight, void* grad_bias, void* h, void* g, void* dx0,
                    void* w_partial, void* b_partial, const SplitPlan& plan) {
  if (batch == 0 || num_sets == 0 || dim == 0 || layers == 0) return;
  if (plan.splits < 1 || plan.depth_per_split % kTileK != 0 ||
      plan.splits * plan.depth_per_split < batch || (plan.splits - 1) * plan.depth_per_split >= batch)
    throw std::invalid_argument("cross_backward: split plan does not cover the batch");
  DeviceGuard guard(launch.device);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const long long md = static_cast<long long>(num_sets) * dim;
    const long long plane = batch * md;
    const long long dd = static_cast<long long>(dim) * dim;
    const T* x0p = static_cast<const T*>(x0);
    T* hp = static_cast<T*>(h);
    T* gp = static_cast<T*>(g);
    A* dx0p = static_cast<A*>(dx0);
    const T* grad = static_cast<const T*>(grad_out);  // dL/dx_{l+1}
    for (int l = layers - 1; l >= 0; --l) {
      const T* xl = l == 0 ? x0p : static_cast<const T*>(xs) + (l - 1) * plane;
      const T* zl = static_cast<const T*>(zs) + l * plane;
      const T* wl = static_cast<const T*>(weight) + static_cast<long long>(l) * num_sets * dd;

      cross_backward_prep_kernel<T><<<stride_grid(plane, kThreads, launch.device), kThreads, 0,
                                      launch.stream>>>(grad, x0p, zl, hp, dx0p, plane,
                                                       l == layers - 1);
      cuda_check_launch("cross_backward_prep_kernel");

      // dW_l[n, k] = sum_b H[b, n] x_l[b, k]: A(n, b) = H column-major (ld M*D), B(b, k) = x_l
      // row-major (ld M*D), depth = batch split into plan.splits slices.
      GemmArgs<T> wargs{hp, md, dim, xl, md, dim, dim, dim, batch, plan.splits, plan.depth_per_split};
      WeightGradEpilogue<T> wepi{static_cast<A*>(w_partial), static_cast<A*>(b_partial),
                                 plan.splits, dim};
      gemm<T, false, false, true>(launch, wargs, num_sets, allow_tf32, wepi, "cross_weight_grad_gemm");
      sum_slices<T>(launch, static_cast<const A*>(w_partial), num_sets, plan.splits, dd,
                    static_cast<T*>(grad_weight) + static_cast<long long>(l) * num_sets * dd);
      sum_slices<T>(launch, static_cast<const A*>(b_partial), num_sets, plan.splits, dim,
                    static_cast<T*>(grad_bias) + l * md);

      // dL/dx_l = G + H W_l: A = H row-major (ld M*D), B(n, k) = W[n, k] row-major (ld D).
      T* dst = l == 0 ? static_cast<T*>(grad_x0) : gp;
      GemmArgs<T> xargs{hp, md, dim, wl, dim, dd, batch, dim, dim, 1, round_up_tile(dim)};
      InputGradEpilogue<T> xepi{grad, l == 0 ? dx0p : nullptr, dst, md, dim};
      gemm<T, true, false, false>(launch, xargs, num_sets, allow_tf32, xepi, "cross_input_grad_gemm");
      grad = gp;
    }
  });
}

}  // namespace kernels
}  // namespace fastme
