// Python bindings of kernels/pooling.h (csrc/bind.h).
#include "bind.h"
#include "pooling.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

template <>
struct fastme::From<const ChunkPlan&> : fastme::PlanFrom<ChunkPlan> {};  // (chunks, chunk_size)

FASTME_BINDINGS(pooling) {
  m.attr("FWFM_FIELD_PAD") = kFwfmFieldPad;
  m.def("fm_forward", fastme::bind(&fm_forward), "launch"_a, "dtype"_a, "table"_a, "ix"_a,
        "num_sets"_a, "dim"_a, "out"_a);
  m.def("fm_backward", fastme::bind(&fm_backward), "launch"_a, "dtype"_a, "grad"_a, "table"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "dest"_a, "atomic"_a);
  m.def("fwfm_forward", fastme::bind(&fwfm_forward), "launch"_a, "dtype"_a, "table"_a, "ix"_a,
        "num_sets"_a, "dim"_a, "q_upper"_a, "out"_a);
  m.def("fwfm_weight_grad_plan", fastme::bind(&fwfm_weight_grad_plan), "batch"_a, "num_sets"_a,
        "device"_a);
  m.def("fwfm_backward", fastme::bind(&fwfm_backward), "launch"_a, "dtype"_a, "grad"_a, "table"_a,
        "ix"_a, "num_sets"_a, "dim"_a, "q_full"_a, "dest"_a, "atomic"_a, "weight_partial"_a,
        "plan"_a, "grad_weight"_a);
}
