#pragma once
// Host-side helpers shared by every kernel file: turn a CUDA error into a Python RuntimeError
// carrying the CUDA error string, and switch to the tensor's device for the duration of a call.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fastme {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastme CUDA error in ") + what + ": " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

// Checks the launch that just happened (configuration errors surface here, asynchronous faults
// surface at the next synchronising call as usual).
inline void cuda_check_launch(const char* kernel) { cuda_check(cudaGetLastError(), kernel); }

// RAII: make `device` current, restore the previous device on exit (multi-GPU safety).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cuda_check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) cuda_check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace fastme
