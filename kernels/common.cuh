#pragma once
// Device helpers shared by every kernel file: element types and their accumulation types,
// 16-byte vector access, index loading with the in-kernel row clamp, and dtype dispatch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "api.h"
#include "cuda_check.h"

namespace fastme {
namespace kernels {

// ---- element types -------------------------------------------------------------------------------

// Accumulation type: float64 stays float64 (the tight-tolerance test path), everything else sums
// in float32.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }

// ---- vector access -------------------------------------------------------------------------------

// Raw storage of an access of `Bytes` bytes; loads and stores go through these so that the
// compiler emits exactly one LDG/STG of that width.
template <int Bytes> struct RawOf;
template <> struct RawOf<16> { using type = uint4; };
template <> struct RawOf<8> { using type = uint2; };
template <> struct RawOf<4> { using type = unsigned int; };
template <> struct RawOf<2> { using type = unsigned short; };

// V consecutive elements of T, moved as one V*sizeof(T)-byte access (V*sizeof(T) in {2,4,8,16}).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p) {
  using Raw = typename RawOf<sizeof(T) * V>::type;
  Raw raw = __ldg(reinterpret_cast<const Raw*>(p));
  Vec<T, V> out;
  *reinterpret_cast<Raw*>(&out) = raw;
  return out;
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, V>& val) {
  using Raw = typename RawOf<sizeof(T) * V>::type;
  *reinterpret_cast<Raw*>(p) = *reinterpret_cast<const Raw*>(&val);
}

// ---- indices ---------------------------------------------------------------------------------------

__device__ __forceinline__ long long load_index(const void* p, bool is64, long long i) {
  return is64 ? __ldg(static_cast<const long long*>(p) + i)
              : static_cast<long long>(__ldg(static_cast<const int*>(p) + i));
}

// Global table row of (sample b, field i): offsets[i] + indices[b, i], clamped into the table so
// that no kernel reads or writes outside it, whatever the bounds-check mode let through.
__device__ __forceinline__ long long table_row(const IndexArgs& ix, long long b, long long i) {
  long long row = load_index(ix.indices, ix.indices_int64, b * ix.num_fields + i) +
                  load_index(ix.offsets, ix.offsets_int64, i);
  row = row < 0 ? 0 : row;
  return row >= ix.num_rows ? ix.num_rows - 1 : row;
}

// ---- host side -----------------------------------------------------------------------------------

inline int sm_count(int device) {
  int n = 0;
  cuda_check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(multiProcessorCount)");
  return n;
}

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// Grid size of a grid-stride loop over `work` items with `per_block` items per block pass:
// enough blocks to fill the device several times over, never more than the work needs.
inline unsigned int stride_grid(long long work, long long per_block, int device) {
  long long blocks = ceil_div(work, per_block);
  long long cap = static_cast<long long>(sm_count(device)) * 32;
  blocks = blocks < cap ? blocks : cap;
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

inline bool aligned(const void* p, int bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(bytes) == 0;
}

// Widest access (16, 8, 4 or 2 bytes, at least one element) that divides `run_bytes` and to which
// every pointer is aligned: the vector width of a kernel whose contiguous runs are run_bytes long.
inline int vector_bytes(int elem_bytes, long long run_bytes, std::initializer_list<const void*> ptrs) {
  for (int vb = 16; vb > elem_bytes; vb /= 2) {
    if (run_bytes % vb != 0) continue;
    bool ok = true;
    for (const void* p : ptrs) ok = ok && aligned(p, vb);
    if (ok) return vb;
  }
  return elem_bytes;
}

inline int dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kBFloat16: return 2;
    case DType::kFloat16: return 2;
  }
  throw std::invalid_argument("fastme: unknown dtype code");
}

// Calls fn(T{}) with T the element type of `dtype`.
template <typename Fn>
void dispatch_float(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}); return;
    case DType::kFloat64: fn(double{}); return;
    case DType::kBFloat16: fn(__nv_bfloat16{}); return;
    case DType::kFloat16: fn(__half{}); return;
  }
  throw std::invalid_argument("fastme: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

// Calls fn(std::integral_constant<int, V>{}) with V = vector_bytes / sizeof(T) elements per access.
template <typename T, typename Fn>
void dispatch_vec(int vbytes, Fn&& fn) {
  constexpr int E = static_cast<int>(sizeof(T));
  switch (vbytes / E) {
    case 1: fn(std::integral_constant<int, 1>{}); return;
    case 2: if constexpr (2 * E <= 16) { fn(std::integral_constant<int, 2>{}); return; } break;
    case 4: if constexpr (4 * E <= 16) { fn(std::integral_constant<int, 4>{}); return; } break;
    case 8: if constexpr (8 * E <= 16) { fn(std::integral_constant<int, 8>{}); return; } break;
    default: break;
  }
  throw std::logic_error("fastme: unsupported vector width");
}

// ---- fixed-order reduction of partial results ----------------------------------------------------

// out[o, x] = sum_s in[o, s, x] for o < outer, s < slices, x < inner, summed in s order (the
// deterministic second pass of every split reduction). Internal linkage: each kernel file gets
// its own copy.
namespace {
template <typename T>
__global__ void __launch_bounds__(256)
sum_slices_kernel(const acc_t<T>* __restrict__ in, long long outer, long long slices,
                  long long inner, T* __restrict__ out) {
  using A = acc_t<T>;
  const long long total = outer * inner;
  for (long long e = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x; e < total;
       e += static_cast<long long>(gridDim.x) * 256) {
    const long long o = e / inner, x = e - o * inner;
    const A* src = in + o * slices * inner + x;
    A acc = A(0);
    for (long long s = 0; s < slices; ++s) acc += src[s * inner];
    out[e] = from_acc<T>(acc);
  }
}

template <typename T>
void sum_slices(const Launch& launch, const acc_t<T>* in, long long outer, long long slices,
                long long inner, T* out) {
  const long long total = outer * inner;
  if (total == 0) return;
  sum_slices_kernel<T><<<stride_grid(total, 256, launch.device), 256, 0, launch.stream>>>(
      in, outer, slices, inner, out);
  cuda_check_launch("sum_slices_kernel");
}
}  // namespace

}  // namespace kernels
}  // namespace fastme
