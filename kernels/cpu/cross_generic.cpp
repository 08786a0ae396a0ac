// The CPU cross network's elementwise passes for the baseline ISA (no extra compiler flags).
#define FASTME_CPU_ISA_NS generic
#include "cross_kernels.h"
