#include "ops.h"

namespace fastme {
#ifdef FASTME_WITH_CUDA
// Defined in csrc/cuda_bindings.cpp, next to the kernels' host API (kernels/api.h).
void register_cuda_ops(pybind11::module_& m);

void register_ops(pybind11::module_& m) { register_cuda_ops(m); }
#else
void register_ops(pybind11::module_&) {}
#endif
}  // namespace fastme
