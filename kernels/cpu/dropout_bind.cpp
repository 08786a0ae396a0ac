// Python binding of kernels/cpu/dropout.h.
#include "bind.h"
#include "dropout.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

FASTME_BINDINGS(cpu_dropout) {
  m.def("cpu_dropout", fastme::bind(&cpu_dropout), "threads"_a, "dtype"_a, "x"_a, "out"_a, "n"_a,
        "seed"_a, "threshold"_a, "scale"_a);
}
