// Python bindings of kernels/lookup.h (csrc/bind.h).
#include "bind.h"
#include "lookup.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

FASTME_BINDINGS(lookup) {
  m.attr("SEGMENT_CHUNK") = kSegmentChunk;
  m.def("lookup_forward", fastme::bind(&lookup_forward), "launch"_a, "dtype"_a, "table"_a, "ix"_a,
        "num_sets"_a, "dim"_a, "out"_a);
  m.def("scatter_rows_atomic", fastme::bind(&scatter_rows_atomic), "launch"_a, "dtype"_a, "src"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "grad_table"_a);
  m.def("scatter_rows_sorted", fastme::bind(&scatter_rows_sorted), "launch"_a, "dtype"_a, "src"_a,
        "sorted_rows"_a, "perm"_a, "num_pairs"_a, "num_fields"_a, "num_sets"_a, "dim"_a, "head"_a,
        "tail"_a, "grad_table"_a);
}
