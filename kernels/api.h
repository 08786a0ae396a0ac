#pragma once
// The types every CUDA kernel's host entry points take (plain C++: no pybind11, no torch). Each
// kernel file <op>.cu declares its entry points in <op>.h and binds them to Python in
// <op>_bind.cpp, one line each (csrc/bind.h converts the arguments).
//
// Conventions: every tensor is contiguous and allocated by the caller (torch); pointers are device
// pointers on `Launch::device`; nothing synchronises; every launch is checked and a CUDA error is
// thrown as std::runtime_error carrying the CUDA error string.
//
// Layouts: kernels/types.h, which also defines DType and IndexArgs.
#include <cuda_runtime.h>

#include "types.h"

namespace fastme {
namespace kernels {

struct Launch {
  int device;
  cudaStream_t stream;
};

}  // namespace kernels
}  // namespace fastme
