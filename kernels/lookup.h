#pragma once
// Host entry points of the grouped multi-set lookup (kernels/lookup.cu),
// bound to Python in kernels/lookup_bind.cpp.
#include "api.h"

namespace fastme {
namespace kernels {

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

}  // namespace kernels
}  // namespace fastme
