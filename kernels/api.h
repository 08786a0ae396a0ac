#pragma once
// Host entry points of the CUDA kernels, in plain C++ types (no pybind11, no torch): the .cu files
// implement them, csrc/cuda_bindings.cpp exposes them to Python.
//
// Conventions: every tensor is contiguous and allocated by the caller (torch); pointers are device
// pointers on `Launch::device`; nothing synchronises; every launch is checked and a CUDA error is
// thrown as std::runtime_error carrying the CUDA error string.
//
// Layouts (docs/ops.md): table [R, M, K]; indices [B, N]; offsets [N]; emb [B, M, N, K];
// pooled [B, M, K]; cross x [B, M, D]; weight [L, M, D, D] (out x in); bias [L, M, D].
#include <cuda_runtime.h>

namespace fastme {
namespace kernels {

// Codes shared with fastme/ops/cuda/_lib.py.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

struct Launch {
  int device;
  cudaStream_t stream;
};

// indices [B, N] and offsets [N], each int32 or int64; rows are clamped into [0, num_rows).
struct IndexArgs {
  const void* indices;
  bool indices_int64;
  const void* offsets;
  bool offsets_int64;
  long long num_rows;
  long long batch;
  long long num_fields;
};

// ---- grouped multi-set lookup (kernels/lookup.cu) -----------------------------------------------

// emb[b, m, i, :] = table[row(b, i), m, :].
void lookup_forward(const Launch& launch, DType dtype, const void* table, const IndexArgs& ix,
                    int num_sets, int dim, void* out);

// grad_table[row(b, i), m, :] += src[b, m, i, :] with atomic adds (float32 / float64 only);
// grad_table must be zero-filled.
void scatter_rows_atomic(const Launch& launch, DType dtype, const void* src, const IndexArgs& ix,
                         int num_sets, int dim, void* grad_table);

// Positions per chunk of the sorted segment reduction (size of its workspaces, see below).
constexpr long long kSegmentChunk = 32;

// Deterministic scatter: the same sum as scatter_rows_atomic, in a fixed order, any float dtype.
// sorted_rows / perm: the clamped global rows of the B*N (sample, field) pairs sorted ascending
// (stably) and the pair index (b * N + i) of each sorted position, both int64. head / tail:
// workspaces of ceil(B*N / kSegmentChunk) * M * K accumulation elements (float32, float64 for
// float64 tables). Rows no pair touches are left untouched (zero-fill grad_table).
void scatter_rows_sorted(const Launch& launch, DType dtype, const void* src,
                         const long long* sorted_rows, const long long* perm, long long num_pairs,
                         long long num_fields, int num_sets, int dim, void* head, void* tail,
                         void* grad_table);

// ---- fused lookup + pooling (kernels/pooling.cu) ------------------------------------------------

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

// ---- per-set DCNv2 cross network (kernels/cross.cu) ---------------------------------------------

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
