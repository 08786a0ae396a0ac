// pybind11 module fastme._C. It never includes torch headers: Python passes raw device pointers,
// sizes and the CUDA stream (as integers) and torch owns every allocation.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastme compiled kernels (CUDA C++). Tensors are passed as raw pointers.";
#ifdef FASTME_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  fastme::register_ops(m);
}
