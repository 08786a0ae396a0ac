#pragma once
// Host entry points of the fused lookup + pooling (kernels/pooling.cu),
// bound to Python in kernels/pooling_bind.cpp.
#include "api.h"

namespace fastme {
namespace kernels {

// out[b, m, :] = 0.5 * ((sum_i e_i)^2 - sum_i e_i^2), e_i = table[row(b, i), m, :].
void fm_forward(const Launch& launch, DType dtype, const void* table, const IndexArgs& ix,
                int num_sets, int dim, void* out);

// Gradient of fm_forward with respect to every gathered e_i, given grad [B, M, K]. atomic: added
// into the zero-filled grad_table `dest` [R, M, K] (float32 / float64); else written to the
// per-pair gradient `dest` [B, M, N, K] (for scatter_rows_sorted).
void fm_backward(const Launch& launch, DType dtype, const void* grad, const void* table,
                 const IndexArgs& ix, int num_sets, int dim, void* dest, bool atomic);

// The field-weight matrices are passed transposed and padded: qt[m, j, i] = q[m, i, j] for i < N,
// zero for N <= i < round_up(N, kFwfmFieldPad); [M, N, round_up(N, kFwfmFieldPad)].
constexpr int kFwfmFieldPad = 8;

// out[b, m, k] = sum_i e_ik sum_{j>=i} q[m, i, j] e_jk with q = the upper-triangular symmetrised
// field weights (q_ii = r_ii, q_ij = r_ij + r_ji for j > i), [M, N, N] in the accumulation type.
void fwfm_forward(const Launch& launch, DType dtype, const void* table, const IndexArgs& ix,
                  int num_sets, int dim, const void* q_upper, void* out);

struct ChunkPlan {
  long long chunks;      // number of sample chunks (partial weight gradients)
  long long chunk_size;  // samples per chunk
};

// How fwfm_backward splits the batch for the field-weight gradient; `weight_partial` must hold
// chunks * M * N * N zero-filled accumulation elements.
ChunkPlan fwfm_weight_grad_plan(long long batch, int num_sets, int device);

// Both gradients of the field-weighted pooling: dE_i = g * sum_j q_full[m, i, j] e_j with
// q_full = r + r^T (to `dest`, atomic or per pair as in fm_backward) and
// grad_weight[m, i, j] = sum_{b, k} g e_i e_j (reduced over chunks in a fixed order).
void fwfm_backward(const Launch& launch, DType dtype, const void* grad, const void* table,
                   const IndexArgs& ix, int num_sets, int dim, const void* q_full, void* dest,
                   bool atomic, void* weight_partial, const ChunkPlan& plan, void* grad_weight);

}  // namespace kernels
}  // namespace fastme
