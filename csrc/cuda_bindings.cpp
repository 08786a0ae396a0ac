// Python bindings of the CUDA kernels (kernels/api.h). Tensors arrive as raw device pointers
// (tensor.data_ptr()), the stream as an integer (torch.cuda.Stream.cuda_stream); every argument is
// keyword-named so that the Python side reads like the C++ declarations.
#ifdef FASTME_WITH_CUDA
#include <pybind11/pybind11.h>

#include <cstdint>

#include "api.h"
#include "cuda_check.h"

#ifndef FASTME_CUDA_ARCHS
#define FASTME_CUDA_ARCHS "unknown"
#endif

namespace py = pybind11;
using namespace py::literals;

namespace fastme {
namespace {

using kernels::DType;
using kernels::IndexArgs;
using kernels::Launch;

template <typename T = void>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

Launch launch_of(int device, std::uintptr_t stream) {
  return Launch{device, reinterpret_cast<cudaStream_t>(stream)};
}

DType dtype_of(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("fastme: unknown dtype code");
  return static_cast<DType>(code);
}

IndexArgs index_args(std::uintptr_t indices, bool indices_int64, std::uintptr_t offsets,
                     bool offsets_int64, long long num_rows, long long batch, long long num_fields) {
  if (batch > 0 && num_fields > 0 && num_rows <= 0)
    throw std::invalid_argument("fastme: the table has no rows but indices is not empty");
  return IndexArgs{ptr<const void>(indices), indices_int64, ptr<const void>(offsets),
                   offsets_int64, num_rows, batch, num_fields};
}

int device_count() {
  int n = 0;
  // No driver / no device is not an error for this query: it simply means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Why device_count() is 0, for error messages ("" when devices are visible).
std::string runtime_status() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }
  return n > 0 ? "" : "no CUDA device visible";
}

void synchronize(int device) {
  DeviceGuard guard(device);
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

}  // namespace

void register_cuda_ops(py::module_& m) {
  m.def("cuda_device_count", &device_count, "Number of CUDA devices visible to the CUDA runtime.");
  m.def("cuda_runtime_status", &runtime_status,
        "Empty when CUDA devices are visible, else the reason (e.g. the driver is too old).");
  m.def("cuda_synchronize", &synchronize, "device"_a,
        "Block until all work on `device` is done; raises with the CUDA error string if any.");
  m.attr("cuda_archs") = FASTME_CUDA_ARCHS;
  m.attr("SEGMENT_CHUNK") = kernels::kSegmentChunk;

  m.def(
      "lookup_forward",
      [](std::uintptr_t table, std::uintptr_t indices, bool indices_int64, std::uintptr_t offsets,
         bool offsets_int64, long long num_rows, long long batch, long long num_fields,
         int num_sets, int dim, std::uintptr_t out, int dtype, int device, std::uintptr_t stream) {
        kernels::lookup_forward(
            launch_of(device, stream), dtype_of(dtype), ptr<const void>(table),
            index_args(indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields),
            num_sets, dim, ptr(out));
      },
      "table"_a, "indices"_a, "indices_int64"_a, "offsets"_a, "offsets_int64"_a, "num_rows"_a,
      "batch"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "out"_a, "dtype"_a, "device"_a, "stream"_a);

  m.def(
      "scatter_rows_atomic",
      [](std::uintptr_t src, std::uintptr_t indices, bool indices_int64, std::uintptr_t offsets,
         bool offsets_int64, long long num_rows, long long batch, long long num_fields,
         int num_sets, int dim, std::uintptr_t grad_table, int dtype, int device,
         std::uintptr_t stream) {
        kernels::scatter_rows_atomic(
            launch_of(device, stream), dtype_of(dtype), ptr<const void>(src),
            index_args(indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields),
            num_sets, dim, ptr(grad_table));
      },
      "src"_a, "indices"_a, "indices_int64"_a, "offsets"_a, "offsets_int64"_a, "num_rows"_a,
      "batch"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "grad_table"_a, "dtype"_a, "device"_a,
      "stream"_a);

  m.def(
      "scatter_rows_sorted",
      [](std::uintptr_t src, std::uintptr_t sorted_rows, std::uintptr_t perm, long long num_pairs,
         long long num_fields, int num_sets, int dim, std::uintptr_t head, std::uintptr_t tail,
         std::uintptr_t grad_table, int dtype, int device, std::uintptr_t stream) {
        kernels::scatter_rows_sorted(launch_of(device, stream), dtype_of(dtype),
                                     ptr<const void>(src), ptr<const long long>(sorted_rows),
                                     ptr<const long long>(perm), num_pairs, num_fields, num_sets,
                                     dim, ptr(head), ptr(tail), ptr(grad_table));
      },
      "src"_a, "sorted_rows"_a, "perm"_a, "num_pairs"_a, "num_fields"_a, "num_sets"_a, "dim"_a,
      "head"_a, "tail"_a, "grad_table"_a, "dtype"_a, "device"_a, "stream"_a);

  m.def(
      "fm_forward",
      [](std::uintptr_t table, std::uintptr_t indices, bool indices_int64, std::uintptr_t offsets,
         bool offsets_int64, long long num_rows, long long batch, long long num_fields,
         int num_sets, int dim, std::uintptr_t out, int dtype, int device, std::uintptr_t stream) {
        kernels::fm_forward(
            launch_of(device, stream), dtype_of(dtype), ptr<const void>(table),
            index_args(indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields),
            num_sets, dim, ptr(out));
      },
      "table"_a, "indices"_a, "indices_int64"_a, "offsets"_a, "offsets_int64"_a, "num_rows"_a,
      "batch"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "out"_a, "dtype"_a, "device"_a, "stream"_a);

  m.def(
      "fm_backward",
      [](std::uintptr_t grad, std::uintptr_t table, std::uintptr_t indices, bool indices_int64,
         std::uintptr_t offsets, bool offsets_int64, long long num_rows, long long batch,
         long long num_fields, int num_sets, int dim, std::uintptr_t dest, bool atomic, int dtype,
         int device, std::uintptr_t stream) {
        kernels::fm_backward(
            launch_of(device, stream), dtype_of(dtype), ptr<const void>(grad),
            ptr<const void>(table),
            index_args(indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields),
            num_sets, dim, ptr(dest), atomic);
      },
      "grad"_a, "table"_a, "indices"_a, "indices_int64"_a, "offsets"_a, "offsets_int64"_a,
      "num_rows"_a, "batch"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "dest"_a, "atomic"_a,
      "dtype"_a, "device"_a, "stream"_a);

  m.attr("FWFM_FIELD_PAD") = kernels::kFwfmFieldPad;
  m.def(
      "fwfm_forward",
      [](std::uintptr_t table, std::uintptr_t indices, bool indices_int64, std::uintptr_t offsets,
         bool offsets_int64, long long num_rows, long long batch, long long num_fields,
         int num_sets, int dim, std::uintptr_t q_upper, std::uintptr_t out, int dtype, int device,
         std::uintptr_t stream) {
        kernels::fwfm_forward(
            launch_of(device, stream), dtype_of(dtype), ptr<const void>(table),
            index_args(indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields),
            num_sets, dim, ptr<const void>(q_upper), ptr(out));
      },
      "table"_a, "indices"_a, "indices_int64"_a, "offsets"_a, "offsets_int64"_a, "num_rows"_a,
      "batch"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "q_upper"_a, "out"_a, "dtype"_a,
      "device"_a, "stream"_a);

  m.def(
      "fwfm_weight_grad_plan",
      [](long long batch, int num_sets, int device) {
        DeviceGuard guard(device);
        const kernels::ChunkPlan plan = kernels::fwfm_weight_grad_plan(batch, num_sets, device);
        return py::make_tuple(plan.chunks, plan.chunk_size);
      },
      "batch"_a, "num_sets"_a, "device"_a,
      "(chunks, chunk_size) of the field-weight gradient: weight_partial holds chunks*M*N*N.");

  m.def(
      "fwfm_backward",
      [](std::uintptr_t grad, std::uintptr_t table, std::uintptr_t indices, bool indices_int64,
         std::uintptr_t offsets, bool offsets_int64, long long num_rows, long long batch,
         long long num_fields, int num_sets, int dim, std::uintptr_t q_full, std::uintptr_t dest,
         bool atomic, std::uintptr_t weight_partial, long long chunks, long long chunk_size,
         std::uintptr_t grad_weight, int dtype, int device, std::uintptr_t stream) {
        kernels::fwfm_backward(
            launch_of(device, stream), dtype_of(dtype), ptr<const void>(grad),
            ptr<const void>(table),
            index_args(indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields),
            num_sets, dim, ptr<const void>(q_full), ptr(dest), atomic, ptr(weight_partial),
            kernels::ChunkPlan{chunks, chunk_size}, ptr(grad_weight));
      },
      "grad"_a, "table"_a, "indices"_a, "indices_int64"_a, "offsets"_a, "offsets_int64"_a,
      "num_rows"_a, "batch"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "q_full"_a, "dest"_a,
      "atomic"_a, "weight_partial"_a, "chunks"_a, "chunk_size"_a, "grad_weight"_a, "dtype"_a,
      "device"_a, "stream"_a);

  m.def(
      "cross_forward",
      [](std::uintptr_t x0, std::uintptr_t weight, std::uintptr_t bias, long long batch,
         int num_sets, int dim, int layers, std::uintptr_t out, std::uintptr_t xs,
         std::uintptr_t zs, bool save, bool allow_tf32, int dtype, int device,
         std::uintptr_t stream) {
        kernels::cross_forward(launch_of(device, stream), dtype_of(dtype), allow_tf32,
                               ptr<const void>(x0), ptr<const void>(weight), ptr<const void>(bias),
                               batch, num_sets, dim, layers, ptr(out), ptr(xs), ptr(zs), save);
      },
      "x0"_a, "weight"_a, "bias"_a, "batch"_a, "num_sets"_a, "dim"_a, "layers"_a, "out"_a, "xs"_a,
      "zs"_a, "save"_a, "allow_tf32"_a, "dtype"_a, "device"_a, "stream"_a);

  m.def(
      "cross_weight_grad_plan",
      [](long long batch, int num_sets, int dim, int device) {
        DeviceGuard guard(device);
        const kernels::SplitPlan plan = kernels::cross_weight_grad_plan(batch, num_sets, dim, device);
        return py::make_tuple(plan.splits, plan.depth_per_split);
      },
      "batch"_a, "num_sets"_a, "dim"_a, "device"_a,
      "(splits, depth_per_split) of the cross weight gradient: w_partial holds M*splits*D*D.");

  m.def(
      "cross_backward",
      [](std::uintptr_t grad_out, std::uintptr_t x0, std::uintptr_t weight, std::uintptr_t xs,
         std::uintptr_t zs, long long batch, int num_sets, int dim, int layers,
         std::uintptr_t grad_x0, std::uintptr_t grad_weight, std::uintptr_t grad_bias,
         std::uintptr_t h, std::uintptr_t g, std::uintptr_t dx0, std::uintptr_t w_partial,
         std::uintptr_t b_partial, long long splits, long long depth_per_split, bool allow_tf32,
         int dtype, int device, std::uintptr_t stream) {
        kernels::cross_backward(launch_of(device, stream), dtype_of(dtype), allow_tf32,
                                ptr<const void>(grad_out), ptr<const void>(x0),
                                ptr<const void>(weight), ptr<const void>(xs), ptr<const void>(zs),
                                batch, num_sets, dim, layers, ptr(grad_x0), ptr(grad_weight),
                                ptr(grad_bias), ptr(h), ptr(g), ptr(dx0), ptr(w_partial),
                                ptr(b_partial), kernels::SplitPlan{splits, depth_per_split});
      },
      "grad_out"_a, "x0"_a, "weight"_a, "xs"_a, "zs"_a, "batch"_a, "num_sets"_a, "dim"_a,
      "layers"_a, "grad_x0"_a, "grad_weight"_a, "grad_bias"_a, "h"_a, "g"_a, "dx0"_a,
      "w_partial"_a, "b_partial"_a, "splits"_a, "depth_per_split"_a, "allow_tf32"_a, "dtype"_a,
      "device"_a, "stream"_a);
}

}  // namespace fastme
#endif  // FASTME_WITH_CUDA
