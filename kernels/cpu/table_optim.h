#pragma once
// Fused sparse optimizers of the embedding table on the CPU (kernels/cpu/table_optim.cpp), bound
// to Python in kernels/cpu/table_optim_bind.cpp and called by fastme/ops/cpu/table_optim.py.
// Pointers are host pointers to contiguous tensors torch allocated; `threads` is the OpenMP team
// size (torch.get_num_threads()).
#include "types.h"

namespace fastme {
namespace kernels {

// kind: 0 sgd, 1 adagrad, 2 rowwise_adagrad, 3 lazy_adam (fastme/train/table_optim.py's
// formulas). The gradient is `pairs` (row, values [M*K]) pairs in any order, duplicates allowed
// (a raw or a coalesced COO gradient): each touched row's values are summed in ascending pair
// order (deterministic: the same bits for every thread count), the coupled weight decay
// `weight_decay * w` added, and the row of `table` [num_rows, M*K] and of the state updated in
// place, in one pass. State: adagrad `state0` [num_rows, M*K]; rowwise_adagrad `state0`
// [num_rows, M]; lazy_adam `state0` exp_avg, `state1` exp_avg_sq, both [num_rows, M*K]; unused
// ones may be null. `slots` [num_rows] int32 must be -1 everywhere and is so again on return (a
// row -> slot map the caller keeps, so that no table-sized buffer is filled per step). Rows out
// of [0, num_rows) are skipped. `step` is the step count including this one (Adam's bias
// correction). dtype float32 or float64.
void cpu_table_optim_step(int threads, DType dtype, int kind, void* table, long long num_rows,
                          int num_sets, int dim, const long long* rows, long long pairs,
                          const void* grad, void* state0, void* state1, int* slots, double lr,
                          double weight_decay, double eps, double beta1, double beta2,
                          long long step);

// The exact dense optimizers' gradient buffer (fastme/train/table_optim.py's DenseGradient):
// `zero` false adds the pairs (rows [pairs], values [pairs, row_elems]) into `buffer` [num_rows,
// row_elems], each row's pairs in ascending pair order (the bits of torch's index_add_ on one
// thread, whatever the number of threads here); `zero` true writes zeros to those rows instead
// (values unused). Each thread owns a range of rows, so no row is shared. Rows out of
// [0, num_rows) are skipped. dtype float32 or float64.
void cpu_table_pairs_scatter(int threads, DType dtype, void* buffer, long long num_rows,
                             long long row_elems, const long long* rows, long long pairs,
                             const void* values, bool zero);

}  // namespace kernels
}  // namespace fastme
