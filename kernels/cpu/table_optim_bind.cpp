// Python binding of kernels/cpu/table_optim.h.
#include "bind.h"
#include "table_optim.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

FASTME_BINDINGS(cpu_table_optim) {
  m.def("cpu_table_optim_step", fastme::bind(&cpu_table_optim_step), "threads"_a, "dtype"_a,
        "kind"_a, "table"_a, "num_rows"_a, "num_sets"_a, "dim"_a, "rows"_a, "pairs"_a, "grad"_a,
        "state0"_a, "state1"_a, "slots"_a, "lr"_a, "weight_decay"_a, "eps"_a, "beta1"_a,
        "beta2"_a, "step"_a);
  m.def("cpu_table_pairs_scatter", fastme::bind(&cpu_table_pairs_scatter), "threads"_a,
        "dtype"_a, "buffer"_a, "num_rows"_a, "row_elems"_a, "rows"_a, "pairs"_a, "values"_a,
        "zero"_a);
}
