// Which ISA the CPU kernels use (kernels/cpu/isa.h).
#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fastme {
namespace cpu {
namespace {

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_X86 1
#endif

bool runs(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return true;
#ifdef FASTME_CPU_X86
    // __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0).
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
#endif
    default:
      return false;
  }
}

Isa parse(const std::string& name) {
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512})
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("fastme: unknown CPU ISA '" + name +
                              "' (expected generic, avx2 or avx512)");
}

Isa best() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2})
    if (runs(isa)) return isa;
  return Isa::kGeneric;
}

// FASTME_CPU_ISA caps the choice (an ISA the processor lacks falls back to the best it has).
Isa initial() {
  const char* env = std::getenv("FASTME_CPU_ISA");
  if (env == nullptr || *env == '\0') return best();
  const Isa wanted = parse(env);
  return runs(wanted) ? wanted : best();
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    default:
      return "generic";
  }
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512})
    if (runs(isa)) names.emplace_back(isa_name(isa));
  return names;
}

Isa active_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

void set_isa(const std::string& name) {
  const Isa isa = parse(name);
  if (!runs(isa))
    throw std::invalid_argument(std::string("fastme: this processor cannot run the ") + name +
                                " kernels");
  current().store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace fastme
