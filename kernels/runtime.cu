// Runtime queries used by the Python side to decide whether the CUDA backend can run.
#include <pybind11/pybind11.h>

#include "cuda_check.h"

namespace fastme {

static int device_count() {
  int n = 0;
  // No driver / no device is not an error for this query: it simply means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

static void synchronize(int device) {
  DeviceGuard guard(device);
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void register_runtime(pybind11::module_& m) {
  m.def("cuda_device_count", &device_count, "Number of CUDA devices visible to the CUDA runtime.");
  m.def("cuda_synchronize", &synchronize, pybind11::arg("device"),
        "Block until all work on `device` is done; raises with the CUDA error string if any.");
}

}  // namespace fastme
