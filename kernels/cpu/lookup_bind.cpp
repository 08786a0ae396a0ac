// Python bindings of kernels/cpu/lookup.h and of the ISA choice (kernels/cpu/isa.h).
#include "bind.h"
#include "isa.h"
#include "lookup.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

FASTME_BINDINGS(cpu_lookup) {
#ifdef _OPENMP
  m.attr("cpu_openmp") = true;
#else
  m.attr("cpu_openmp") = false;
#endif
  m.def("cpu_isa", [] { return std::string(fastme::cpu::isa_name(fastme::cpu::active_isa())); },
        "The ISA the CPU kernels use: generic, avx2 or avx512.");
  m.def("cpu_supported_isas", &fastme::cpu::supported_isas,
        "The ISAs this processor can run the CPU kernels with, baseline first.");
  m.def("cpu_set_isa", &fastme::cpu::set_isa, "name"_a,
        "Run the CPU kernels with ISA `name` (one of cpu_supported_isas()).");
  m.def("cpu_lookup_forward", fastme::bind(&cpu_lookup_forward), "threads"_a, "dtype"_a, "table"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "out"_a);
  m.def("cpu_lookup_forward_to", fastme::bind(&cpu_lookup_forward_to), "threads"_a, "table"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "out_dtype"_a, "out"_a);
  m.def("cpu_check_indices", fastme::bind(&cpu_check_indices), "threads"_a, "indices"_a,
        "indices_int64"_a, "batch"_a, "num_fields"_a, "field_dims"_a, "field_dims_int64"_a,
        "(first bad pair b * num_fields + i or -1, number of bad pairs) of the bounds check.");
  m.def("cpu_lookup_backward", fastme::bind(&cpu_lookup_backward), "threads"_a, "dtype"_a,
        "grad"_a, "ix"_a, "num_sets"_a, "dim"_a, "grad_table"_a);
}
