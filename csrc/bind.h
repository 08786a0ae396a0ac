#pragma once
// What every kernel's binding file (kernels/<op>_bind.cpp) shares: `bind(&fn)` turns a host entry
// point into a Python function whose parameters pybind11 can convert (tensors as tensor.data_ptr(),
// the launch as (device, stream), dtype codes, structs as tuples), so that a binding is one line:
// its Python name, the function and its argument names (tests/test_cuda_build.py checks those
// against the C++ declaration and the Python callers). FASTME_BINDINGS adds a file's bindings to
// fastme._C without a central list.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "types.h"
#ifdef FASTME_WITH_CUDA
#include "api.h"
#endif

namespace fastme {

// From<T>::type is what Python passes for a parameter of type T (and what __doc__ shows);
// From<T>::get makes the T.
template <typename T>
struct From {  // int, long long, bool
  using type = T;
  static T get(T v) { return v; }
};

template <typename T>
struct From<T*> {  // device pointers, from tensor.data_ptr()
  using type = std::uintptr_t;
  static T* get(type p) { return reinterpret_cast<T*>(p); }
};

template <>
struct From<kernels::DType> {  // codes of kernels/types.h
  using type = int;
  static kernels::DType get(int code) {
    if (code < 0 || code > 3) throw std::invalid_argument("fastme: unknown dtype code");
    return static_cast<kernels::DType>(code);
  }
};

#ifdef FASTME_WITH_CUDA
template <>
struct From<const kernels::Launch&> {  // (device, torch.cuda.Stream.cuda_stream)
  using type = std::pair<int, std::uintptr_t>;
  static kernels::Launch get(const type& v) {
    return kernels::Launch{v.first, reinterpret_cast<cudaStream_t>(v.second)};
  }
};
#endif

template <>
struct From<const kernels::IndexArgs&> {  // the fields of IndexArgs, in order
  using type = std::tuple<std::uintptr_t, bool, std::uintptr_t, bool, long long, long long,
                          long long>;
  static kernels::IndexArgs get(const type& v) {
    const auto& [indices, indices_int64, offsets, offsets_int64, num_rows, batch, num_fields] = v;
    if (batch > 0 && num_fields > 0 && num_rows <= 0)
      throw std::invalid_argument("fastme: the table has no rows but indices is not empty");
    return kernels::IndexArgs{reinterpret_cast<const void*>(indices), indices_int64,
                              reinterpret_cast<const void*>(offsets), offsets_int64, num_rows,
                              batch, num_fields};
  }
};

// Two-field plan structs (ChunkPlan, SplitPlan) travel as (first, second) tuples both ways.
template <typename Plan>
struct PlanFrom {
  using type = std::pair<long long, long long>;
  static Plan get(const type& v) { return Plan{v.first, v.second}; }
};

template <typename Plan>
std::pair<long long, long long> plan_to_python(const Plan& plan) {
  const auto& [first, second] = plan;
  return {first, second};
}

template <typename R, typename... A>
auto bind(R (*fn)(A...)) {
  return [fn](typename From<A>::type... args) {
    if constexpr (std::is_void_v<R>) {
      fn(From<A>::get(args)...);
    } else {
      return plan_to_python(fn(From<A>::get(args)...));
    }
  };
}

using Binder = void (*)(pybind11::module_&);

inline std::vector<Binder>& binders() {
  static std::vector<Binder> all;
  return all;
}

struct AddBinder {
  explicit AddBinder(Binder binder) { binders().push_back(binder); }
};

}  // namespace fastme

// FASTME_BINDINGS(name) { m.def(...); }: the bindings of one kernel file.
#define FASTME_BINDINGS(name)                                      \
  static void fastme_bind_##name(pybind11::module_& m);            \
  static const ::fastme::AddBinder fastme_add_##name(&fastme_bind_##name); \
  static void fastme_bind_##name(pybind11::module_& m)
