#pragma once
// Host entry points of the lookup fused with FM / field-weighted (FwFM) pooling on the CPU
// (kernels/cpu/pooling.cpp), bound to Python in kernels/cpu/pooling_bind.cpp. Pointers are host
// pointers to contiguous tensors torch allocated; `threads` is the OpenMP team size. Sums run in
// the accumulation type: double for float64 tables, else float. e_i = table[row(b, i), m, :].
#include "types.h"

namespace fastme {
namespace kernels {

// out[b, m, :] = 0.5 * ((sum_i e_i)^2 - sum_i e_i^2), [B, M, K] in the table's dtype.
void cpu_fm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                    int num_sets, int dim, void* out);

// The table gradient grad_table [R, M, K] (accumulation type, every row written) given grad
// [B, M, K]: each gathered e_i's gradient g * (sum_j e_j - e_i) added into its row, the pairs of a
// row in ascending pair order (deterministic, as the lookup's backward), never written out as
// [B, M, N, K].
void cpu_fm_backward(int threads, DType dtype, const void* grad, const void* table,
                     const IndexArgs& ix, int num_sets, int dim, void* grad_table);

// out[b, m, :] = sum_i e_i * sum_{j>=i} q_upper[m, i, j] e_j, with q_upper [M, N, N] (in the
// accumulation type) the field weights folded onto the upper triangle (q_ii = r_ii,
// q_ij = r_ij + r_ji for j > i, zero below): half of the pairs, the same sum.
void cpu_fwfm_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                      int num_sets, int dim, const void* q_upper, void* out);

// Both gradients of the field-weighted pooling, with q_full = r + r^T [M, N, N] (accumulation
// type): the table gradient as in cpu_fm_backward with grad e_i = g * sum_j q_full[m, i, j] e_j,
// and grad_weight[m, i, j] = sum_{b, k} g e_i e_j ([M, N, N], accumulation type), summed per fixed
// range of samples, then over the ranges in order: the same bits for every thread count.
void cpu_fwfm_backward(int threads, DType dtype, const void* grad, const void* table,
                       const IndexArgs& ix, int num_sets, int dim, const void* q_full,
                       void* grad_table, void* grad_weight);

}  // namespace kernels
}  // namespace fastme
