#pragma once
#include <pybind11/pybind11.h>

namespace fastme {
// Adds every kernel entry point to the module; without CUDA it adds nothing.
void register_ops(pybind11::module_& m);
}  // namespace fastme
