// The fused table optimizers' inner loops for the baseline ISA (kernels/cpu/table_optim_kernels.h).
#define FASTME_CPU_ISA_NS generic
#include "table_optim_kernels.h"
