// The CPU pooled lookup's inner loops for the baseline ISA (no extra compiler flags): any processor.
#define FASTME_CPU_ISA_NS generic
#include "pooling_kernels.h"
