#pragma once
// The types every CUDA kernel's host entry points take (plain C++: no pybind11, no torch). Each
// kernel file <op>.cu declares its entry points in <op>.h and binds them to Python in
// <op>_bind.cpp, one line each (csrc/bind.h converts the arguments).
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

}  // namespace kernels
}  // namespace fastme
