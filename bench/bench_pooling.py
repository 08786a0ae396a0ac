"""Lookup fused with FM pooling and with field-weighted (FwFM) pooling, forward and
forward+backward."""

import pytest

import harness

CASES = [harness.OpCase("pooled_lookup", m, backward, weighted)
         for weighted in (False, True) for m in harness.OP_SETS for backward in (False, True)]


@pytest.mark.parametrize(("case", "variant"), harness.params(CASES))
def test_pooled_lookup(benchmark, case, variant):
    harness.run(benchmark, case, variant)
