#pragma once
// The table row of a (sample, field) pair, as every backend computes it
// (fastme/ops/_policy.py:global_rows): offsets[i] + indices[b, i], clamped into the table. In an
// anonymous namespace: each ISA's translation unit keeps its own copy (kernels/cpu/isa.h).
#include "types.h"

namespace fastme {
namespace cpu {
namespace {

inline long long load_index(const void* p, bool int64, long long k) {
  return int64 ? static_cast<const long long*>(p)[k] : static_cast<const int*>(p)[k];
}

inline long long global_row(const kernels::IndexArgs& ix, long long b, long long i) {
  const long long row =
      load_index(ix.indices, ix.indices_int64, b * ix.num_fields + i) +
      load_index(ix.offsets, ix.offsets_int64, i);
  return row < 0 ? 0 : (row >= ix.num_rows ? ix.num_rows - 1 : row);
}

}  // namespace
}  // namespace cpu
}  // namespace fastme
