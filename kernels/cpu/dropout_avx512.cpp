// The dropout loop for the avx512 ISA (compiler flags: CMakeLists.txt).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_ISA_NS avx512
#include "dropout_kernels.h"
#endif
