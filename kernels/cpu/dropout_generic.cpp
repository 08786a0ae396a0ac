// The dropout loop for the baseline ISA (kernels/cpu/dropout_kernels.h).
#define FASTME_CPU_ISA_NS generic
#include "dropout_kernels.h"
