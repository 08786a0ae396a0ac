"""Grouped multi-set embedding lookup, forward and forward+backward (dense table gradient)."""

import pytest

import harness

CASES = [harness.OpCase("multi_embedding_lookup", m, backward)
         for m in harness.OP_SETS for backward in (False, True)]


@pytest.mark.parametrize(("case", "variant"), harness.params(CASES))
def test_multi_embedding_lookup(benchmark, case, variant):
    harness.run(benchmark, case, variant)
