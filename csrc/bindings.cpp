// pybind11 module fastme._C. It never includes torch headers: Python passes raw device pointers,
// sizes and the CUDA stream (as integers) and torch owns every allocation.
#include <pybind11/pybind11.h>

namespace py = pybind11;

#ifdef FASTME_WITH_CUDA
namespace fastme {
// The CUDA runtime queries and every kernel file's bindings (kernels/<op>_bind.cpp); defined in
// csrc/cuda_bindings.cpp.
void register_cuda_ops(py::module_& m);
}  // namespace fastme
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastme compiled kernels (CUDA C++). Tensors are passed as raw pointers.";
#ifdef FASTME_WITH_CUDA
  m.attr("built_with_cuda") = true;
  fastme::register_cuda_ops(m);
#else
  m.attr("built_with_cuda") = false;
#endif
}
