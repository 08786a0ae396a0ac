// Python bindings of kernels/cross.h (csrc/bind.h).
#include "bind.h"
#include "cross.h"

using namespace pybind11::literals;
using namespace fastme::kernels;

template <>
struct fastme::From<const SplitPlan&> : fastme::PlanFrom<SplitPlan> {};  // (splits, depth)

FASTME_BINDINGS(cross) {
  m.def("cross_forward", fastme::bind(&cross_forward), "launch"_a, "dtype"_a, "allow_tf32"_a,
        "x0"_a, "weight"_a, "bias"_a, "batch"_a, "num_sets"_a, "dim"_a, "layers"_a, "out"_a,
        "xs"_a, "zs"_a, "save"_a);
  m.def("cross_weight_grad_plan", fastme::bind(&cross_weight_grad_plan), "batch"_a, "num_sets"_a,
        "dim"_a, "device"_a);
  m.def("cross_backward", fastme::bind(&cross_backward), "launch"_a, "dtype"_a, "allow_tf32"_a,
        "grad_out"_a, "x0"_a, "weight"_a, "xs"_a, "zs"_a, "batch"_a, "num_sets"_a, "dim"_a,
        "layers"_a, "grad_x0"_a, "grad_weight"_a, "grad_bias"_a, "h"_a, "g"_a, "dx0"_a,
        "w_partial"_a, "b_partial"_a, "plan"_a);
}
