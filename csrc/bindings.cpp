// pybind11 module fastme._C. It never includes torch headers: Python passes raw pointers, sizes
// and (CUDA) the stream as integers, and torch owns every tensor. The CPU kernels (kernels/cpu/)
// are always compiled; the CUDA kernels only with FASTME_WITH_CUDA.
#include <pybind11/pybind11.h>

#include "bind.h"

namespace py = pybind11;

#ifdef FASTME_WITH_CUDA
namespace fastme {
// The CUDA runtime queries; defined in csrc/cuda_bindings.cpp.
void register_cuda_ops(py::module_& m);
}  // namespace fastme
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastme compiled kernels (CPU C++, CUDA C++); tensors are raw pointers.";
#ifdef FASTME_WITH_CUDA
  m.attr("built_with_cuda") = true;
  fastme::register_cuda_ops(m);
#else
  m.attr("built_with_cuda") = false;
#endif
  // Every kernel file's bindings (FASTME_BINDINGS in kernels/<op>_bind.cpp, kernels/cpu/).
  for (fastme::Binder binder : fastme::binders()) binder(m);
}
