// The dropout loop for the avx2 ISA (compiler flags: CMakeLists.txt).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTME_CPU_ISA_NS avx2
#include "dropout_kernels.h"
#endif
