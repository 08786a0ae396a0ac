#pragma once
// The plain-C++ types every kernel backend's host entry points share (no CUDA, no pybind11, no
// torch), so that the CPU kernels (kernels/cpu/) build without a CUDA toolkit.
//
// Layouts (docs/ops.md): table [R, M, K]; indices [B, N]; offsets [N]; emb [B, M, N, K];
// pooled [B, M, K]; cross x [B, M, D]; weight [L, M, D, D] (out x in); bias [L, M, D].

namespace fastme {
namespace kernels {

// Codes shared with fastme/ops/cuda/_lib.py and fastme/ops/cpu/_lib.py.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

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
