"""Lookup fused with FM pooling and with field-weighted (FwFM) pooling, forward and
forward+backward. No outside library has either fused op (FBGEMM and TorchRec pool by sum only),
so the rows compare fastme's own variants."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import costs
import harness
from harness import DEVICE, EMBED_DIM, NUM_FIELDS, NUM_ROWS, OP_BATCH

ARGS = ("table", "indices", "offsets", "field_weights")


@dataclass(frozen=True)
class PooledLookupCase(harness.Case):
    sets: int
    backward: bool
    weighted: bool  # field-weighted (FwFM) instead of FM pooling
    kind = "op"

    @property
    def id(self) -> str:
        return (
            f"{'fwfm' if self.weighted else 'fm'}-{'fwdbwd' if self.backward else 'fwd'}"
            f"-M{self.sets}"
        )

    @property
    def title(self) -> str:
        return (
            f"pooled_lookup {'FwFM' if self.weighted else 'FM'} "
            f"{'fwd+bwd' if self.backward else 'fwd'} M={self.sets}"
        )

    def variants(self) -> list[str]:
        return harness.own_variants()

    def inputs(self, seed: int) -> dict:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        M, grad = self.sets, self.backward
        table = torch.randn(NUM_ROWS, M, EMBED_DIM, generator=g, device=DEVICE) * 0.1
        weights = torch.randn(M, NUM_FIELDS, NUM_FIELDS, generator=g, device=DEVICE)
        item = {
            "table": table.requires_grad_(grad),
            "indices": harness.random_indices(g, OP_BATCH),
            "offsets": harness.field_offsets(),
            "field_weights": weights.requires_grad_(grad) if self.weighted else None,
        }
        if grad:
            item["grad_out"] = torch.randn(OP_BATCH, M, EMBED_DIM, generator=g, device=DEVICE)
        return item

    def prepare(self) -> harness.CaseData:
        pool = harness.build_pool(self.inputs, harness.tensor_bytes)
        cost = costs.pooled_lookup(
            OP_BATCH,
            NUM_FIELDS,
            self.sets,
            EMBED_DIM,
            NUM_ROWS,
            weighted=self.weighted,
            backward=self.backward,
        )
        # Reductions may run in another order; a real bug gives errors of 1e-1 or more.
        return harness.CaseData(pool=pool, cost=cost, tol=1e-2 if DEVICE.type == "cuda" else 1e-4)

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        return harness.own_op_runner(variant, "pooled_lookup", ARGS, data.pool, self.backward)


CASES = [
    PooledLookupCase(m, backward, weighted)
    for weighted in (False, True)
    for m in harness.OP_SETS
    for backward in (False, True)
]


@pytest.mark.parametrize("case", harness.params(CASES))
def test_pooled_lookup(benchmark, case):
    harness.run(benchmark, case)
