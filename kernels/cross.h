#pragma once
// Host entry points of the per-set DCNv2 cross network (kernels/cross.cu),
// bound to Python in kernels/cross_bind.cpp.
#include "api.h"

namespace fastme {
namespace kernels {

// x_{l+1} = x0 * (W_l x_l + b_l) + x_l for l < L, per set. Result x_L in `out`.
// save: xs holds x_1 .. x_{L-1} ([L-1, B, M, D]) and zs holds z_l = W_l x_l + b_l ([L, B, M, D])
// for the backward. Not save: zs is unused and xs is one [B, M, D] scratch buffer (L >= 2).
// allow_tf32: float32 GEMMs on TF32 tensor cores; otherwise exact float32 FMA.
void cross_forward(const Launch& launch, DType dtype, bool allow_tf32, const void* x0,
                   const void* weight, const void* bias, long long batch, int num_sets, int dim,
                   int layers, void* out, void* xs, void* zs, bool save);

struct SplitPlan {
  long long splits;           // batch slices of the weight-gradient GEMM (split-K)
  long long depth_per_split;  // samples per slice (a multiple of the GEMM's K tile)
};

// How cross_backward splits the batch for the weight gradient. Workspaces: w_partial holds
// M * splits * D * D and b_partial M * splits * D accumulation elements.
SplitPlan cross_weight_grad_plan(long long batch, int num_sets, int dim, int device);

// Gradients of cross_forward given grad_out = dL/dx_L. Scratch: h, g [B, M, D] (element type) and
// dx0 [B, M, D] (accumulation type).
void cross_backward(const Launch& launch, DType dtype, bool allow_tf32, const void* grad_out,
                    const void* x0, const void* weight, const void* xs, const void* zs,
                    long long batch, int num_sets, int dim, int layers, void* grad_x0,
                    void* grad_weight, void* grad_bias, void* h, void* g, void* dx0,
                    void* w_partial, void* b_partial, const SplitPlan& plan);

}  // namespace kernels
}  // namespace fastme
