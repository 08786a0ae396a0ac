"""Per-set DCNv2 cross network (4 layers), alone and with the lookup fused in front, forward and
forward+backward."""

import pytest

import harness

CASES = [harness.OpCase(op, m, backward)
         for op in ("cross_network", "lookup_cross_network")
         for m in harness.OP_SETS for backward in (False, True)]


@pytest.mark.parametrize(("case", "variant"), harness.params(CASES))
def test_cross_network(benchmark, case, variant):
    harness.run(benchmark, case, variant)
