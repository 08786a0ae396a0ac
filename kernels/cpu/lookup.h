#pragma once
// Host entry points of the grouped multi-set lookup on the CPU (kernels/cpu/lookup.cpp), bound to
// Python in kernels/cpu/lookup_bind.cpp. Pointers are host pointers to contiguous tensors torch
// allocated; `threads` is the OpenMP team size (torch.get_num_threads()).
#include <utility>

#include "types.h"

namespace fastme {
namespace kernels {

// emb[b, m, i, :] = table[row(b, i), m, :], any dtype.
void cpu_lookup_forward(int threads, DType dtype, const void* table, const IndexArgs& ix,
                        int num_sets, int dim, void* out);

// The same from a float32 table into bfloat16 (out_dtype kBFloat16, rounded as torch rounds) or
// float16 out: the x_0 of a cross network under autocast, without a float32 copy and a cast.
void cpu_lookup_forward_to(int threads, const void* table, const IndexArgs& ix, int num_sets,
                           int dim, DType out_dtype, void* out);

// The dense table gradient: grad_table[r] = sum of grad[b, :, i, :] over the pairs (b, i) of row
// r, in ascending pair order (deterministic, the order of torch's index_add_), zero for rows no
// pair touches; every row of grad_table is written. 16-bit gradients are summed in float32 and
// rounded once.
void cpu_lookup_backward(int threads, DType dtype, const void* grad, const IndexArgs& ix,
                         int num_sets, int dim, void* grad_table);

// The index bounds check of every lookup op on CPU tensors (fastme/ops/_validation.py): the
// pairs (b, i) of indices [batch, num_fields] whose value is outside [0, field_dims[i]). Returns
// (the first such pair in row-major order as b * num_fields + i, or -1; how many there are), in
// one pass over the indices, without the temporaries of the torch expression.
std::pair<long long, long long> cpu_check_indices(int threads, const void* indices,
                                                  bool indices_int64, long long batch,
                                                  long long num_fields, const void* field_dims,
                                                  bool field_dims_int64);

}  // namespace kernels
}  // namespace fastme
