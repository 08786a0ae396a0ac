#include "ops.h"

namespace fastme {
#ifdef FASTME_WITH_CUDA
// Defined next to the kernels in kernels/*.cu.
void register_runtime(pybind11::module_& m);

void register_ops(pybind11::module_& m) { register_runtime(m); }
#else
void register_ops(pybind11::module_&) {}
#endif
}  // namespace fastme
