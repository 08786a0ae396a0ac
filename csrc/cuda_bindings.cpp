// Python bindings of the CUDA runtime queries; every kernel file binds its own entry points
// (kernels/<op>_bind.cpp, registered through csrc/bind.h and added in csrc/bindings.cpp).
#ifdef FASTME_WITH_CUDA
#include <cuda_runtime.h>

#include <string>

#include "bind.h"
#include "cuda_check.h"

#ifndef FASTME_CUDA_ARCHS
#define FASTME_CUDA_ARCHS "unknown"
#endif

namespace py = pybind11;
using namespace py::literals;

namespace fastme {
namespace {

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
}

}  // namespace fastme
#endif  // FASTME_WITH_CUDA
