#pragma once
// Host entry points of the elementwise passes of the per-set DCNv2 cross network on the CPU
// (kernels/cpu/cross.cpp), bound to Python in kernels/cpu/cross_bind.cpp; the GEMMs between them
// are torch's (fastme/ops/cpu/cross.py). Every operand is a set of rows of D contiguous elements
// indexed (m, b): row (m, b) of an operand given as (ptr, *_sm, *_sb) starts at
// ptr + m * sm + b * sb elements, so one pass reads [B, M, D] and writes [M, B, D] (or back)
// without a transposing copy. Operands without strides are [M, B, D] contiguous; bias [M, D].
// Arithmetic in the accumulation type (double for float64, else float), each result rounded
// once to the dtype.
#include "types.h"

namespace fastme {
namespace kernels {

// out = x0 * (z + bias) + x: one layer's epilogue, z = x W^T its GEMM's output.
void cpu_cross_layer_forward(int threads, DType dtype, int num_sets, long long batch, int dim,
                             const void* x0, long long x0_sm, long long x0_sb, const void* z,
                             const void* x, long long x_sm, long long x_sb, const void* bias,
                             void* out, long long out_sm, long long out_sb);

// One layer's backward pass around its GEMMs. G = g + h (h, the previous pass's u W, may be
// null; then G = g) is the gradient of the layer's output; with g_out, G is written there. Then
// u = G * x0 (the gradient of z, dtype), dx0_acc (accumulation type) = or += G * (z + bias), and
// grad_bias = sum over the batch of u (dtype), summed per fixed range of samples, then over the
// ranges in order: the same bits for every thread count.
void cpu_cross_layer_backward(int threads, DType dtype, int num_sets, long long batch, int dim,
                              const void* g, long long g_sm, long long g_sb, const void* h,
                              void* g_out, const void* x0, long long x0_sm, long long x0_sb,
                              const void* z, const void* bias, void* u, void* dx0_acc,
                              bool accumulate, void* grad_bias);

// grad_x0 = dx0_acc + g + h (h may be null): the last step of the backward.
void cpu_cross_grad_x0(int threads, DType dtype, int num_sets, long long batch, int dim,
                       const void* dx0_acc, const void* g, long long g_sm, long long g_sb,
                       const void* h, void* grad_x0, long long gx_sm, long long gx_sb);

// out [B, D] = mean over the M sets of relu(z_m + bias_m): the epilogue of the models' per-set
// projection in eval mode (fastme/ops/cpu/projection.py), whose GEMMs z_m = x_m W_m^T are torch's,
// without bias. z: an array of M pointers to [B, D] contiguous rows of the dtype; bias [M, D] in
// the accumulation type; out in the dtype.
void cpu_set_relu_mean(int threads, DType dtype, int num_sets, long long batch, int dim,
                       const void* const* z, const void* bias, void* out);

}  // namespace kernels
}  // namespace fastme
