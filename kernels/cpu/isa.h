#pragma once
// Runtime ISA dispatch of the CPU kernels. Each kernel's inner loops are compiled once per ISA,
// in its own translation unit (kernels/cpu/<op>_<isa>.cpp, with that ISA's compiler flags; see
// CMakeLists.txt), each in a namespace of its own so that no inline function or template of one
// ISA can stand in for another's at link time. The entry points (kernels/cpu/<op>.cpp, compiled
// for the baseline ISA) pick the implementation on every call from active_isa(): the best the
// processor and the OS support, or FASTME_CPU_ISA / set_isa() (tests run every ISA this way).
#include <string>
#include <vector>

namespace fastme {
namespace cpu {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// "generic", "avx2" (AVX2 + FMA), "avx512" (AVX-512 F/BW/VL).
const char* isa_name(Isa isa);
// The ISAs this processor runs and this build has code for, baseline first.
std::vector<std::string> supported_isas();
// The ISA the kernels use now.
Isa active_isa();
// Use `name` (one of supported_isas()); std::invalid_argument otherwise.
void set_isa(const std::string& name);

}  // namespace cpu
}  // namespace fastme
