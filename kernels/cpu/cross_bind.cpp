// Python bindings of kernels/cpu/cross.h.
#include "bind.h"
#include "cross.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

FASTME_BINDINGS(cpu_cross) {
  m.def("cpu_cross_layer_forward", fastme::bind(&cpu_cross_layer_forward), "threads"_a,
        "dtype"_a, "num_sets"_a, "batch"_a, "dim"_a, "x0"_a, "x0_sm"_a, "x0_sb"_a, "z"_a, "x"_a,
        "x_sm"_a, "x_sb"_a, "bias"_a, "out"_a, "out_sm"_a, "out_sb"_a);
  m.def("cpu_cross_layer_backward", fastme::bind(&cpu_cross_layer_backward), "threads"_a,
        "dtype"_a, "num_sets"_a, "batch"_a, "dim"_a, "g"_a, "g_sm"_a, "g_sb"_a, "h"_a, "g_out"_a,
        "x0"_a, "x0_sm"_a, "x0_sb"_a, "z"_a, "bias"_a, "u"_a, "dx0_acc"_a, "accumulate"_a,
        "grad_bias"_a);
  m.def("cpu_cross_grad_x0", fastme::bind(&cpu_cross_grad_x0), "threads"_a, "dtype"_a,
        "num_sets"_a, "batch"_a, "dim"_a, "dx0_acc"_a, "g"_a, "g_sm"_a, "g_sb"_a, "h"_a,
        "grad_x0"_a, "gx_sm"_a, "gx_sb"_a);
  m.def("cpu_set_relu_mean", fastme::bind(&cpu_set_relu_mean), "threads"_a, "dtype"_a,
        "num_sets"_a, "batch"_a, "dim"_a, "z"_a, "bias"_a, "out"_a);
}
