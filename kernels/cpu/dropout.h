#pragma once
// Dropout with a counter-based mask on the CPU (kernels/cpu/dropout.cpp), bound to Python in
// kernels/cpu/dropout_bind.cpp and called by fastme/ops/cpu/dropout.py. Pointers are host
// pointers to contiguous tensors torch allocated; `threads` is the OpenMP team size.
#include "types.h"

namespace fastme {
namespace kernels {

// out[i] = x[i] * s_i for i in [0, n), with s_i = scale where dropout_bits(seed, i) >= threshold
// and 0 elsewhere, in float32 (float64 for float64) and rounded once to the dtype; NaN and inf
// in x stay NaN where dropped, as x * 0. dropout_bits (kernels/cpu/dropout_kernels.h) is a hash
// of (seed, i) only: the mask is the same for every thread count and ISA, and the backward is
// this function on the output gradient with the same seed. threshold = floor(p * 2^32) keeps
// each element with probability 1 - p. dtype: any of DType's; x and out may be the same.
void cpu_dropout(int threads, DType dtype, const void* x, void* out, long long n,
                 unsigned long long seed, unsigned long long threshold, double scale);

}  // namespace kernels
}  // namespace fastme
