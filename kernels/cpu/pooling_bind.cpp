// Python bindings of kernels/cpu/pooling.h.
#include "bind.h"
#include "pooling.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

FASTME_BINDINGS(cpu_pooling) {
  m.def("cpu_fm_forward", fastme::bind(&cpu_fm_forward), "threads"_a, "dtype"_a, "table"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "out"_a);
  m.def("cpu_fm_backward", fastme::bind(&cpu_fm_backward), "threads"_a, "dtype"_a, "grad"_a,
        "table"_a, "ix"_a, "num_sets"_a, "dim"_a, "grad_table"_a);
  m.def("cpu_fwfm_forward", fastme::bind(&cpu_fwfm_forward), "threads"_a, "dtype"_a, "table"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "q_upper"_a, "out"_a);
  m.def("cpu_fwfm_backward", fastme::bind(&cpu_fwfm_backward), "threads"_a, "dtype"_a, "grad"_a,
        "table"_a, "ix"_a, "num_sets"_a, "dim"_a, "q_full"_a, "grad_table"_a, "grad_weight"_a);
}
