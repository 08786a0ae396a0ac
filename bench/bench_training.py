"""One training step (forward, backward, Adam) and one inference forward of ME-DCNv2, ME-NFwFM
and ME-DNN at scales 1, 4 and 10."""

import pytest

import harness

CASES = [harness.ModelCase(model, scale, train)
         for model in harness.BENCH_MODELS for train in (True, False)
         for scale in harness.MODEL_SCALES]


@pytest.mark.parametrize(("case", "variant"), harness.params(CASES))
def test_model(benchmark, case, variant):
    harness.run(benchmark, case, variant)
