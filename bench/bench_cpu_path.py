"""Side-by-side measurements of the CPU path's choices: each case times fastme as it is
(``eager``) against the alternative it replaced or rejected, in the same run.

- the reference cross network's formulation (fwd+bwd): the per-layer ``weight[layer]``
  indexing it replaced, for one set (SE) the batched ``einsum`` it replaced with 2-D matmuls,
  and a candidate with fewer unfused elementwise ops (sets as the batch
  of ``baddbmm`` for ``x W^T + b``, then one ``addcmul`` for ``x0 * h + x``);
- ReLU + dropout: torch's ``nn.Dropout`` against fastme's CPU dropout mask;
- one Adam step over 11.8M parameters: torch's default (unfused) Adam against the fused one;
- an ME-DCNv2 x4 training step with each of those two choices undone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import bench_cross_network
import costs
import fastme.models
import bench_training
import harness
from fastme.models.layers import Dropout
from fastme.ops import reference


def cross_per_layer_indexing(x0, weight, bias):
    """The reference cross network before: weight[layer] / bias[layer] indexed per layer."""
    x = x0
    for layer in range(weight.shape[0]):
        x = x0 * (torch.einsum("bmd,med->bme", x, weight[layer]) + bias[layer]) + x
    return x


def cross_single_set_batched(x0, weight, bias):
    """The reference cross network before, for one set too: the batched einsum (bmm), whose
    weight gradients come out transposed, so stacking them copies every weight strided."""
    x = x0
    for w, b in zip(weight.unbind(0), bias.unbind(0)):
        x = x0 * (torch.einsum("bmd,med->bme", x, w) + b) + x
    return x


def cross_fused_elementwise(x0, weight, bias):
    """Candidate: sets as the batch dimension, bias fused into baddbmm, x0 * h + x one addcmul."""
    x0_sets = x0.transpose(0, 1)
    x = x0_sets
    for w, b in zip(weight.unbind(0), bias.unbind(0)):
        x = torch.addcmul(x, x0_sets, torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)))
    return x.transpose(0, 1)


FORMULATIONS = {
    "per_layer_indexing": cross_per_layer_indexing,
    "single_set_batched": cross_single_set_batched,
    "fused_elementwise": cross_fused_elementwise,
}


@dataclass(frozen=True)
class CrossFormulationCase(bench_cross_network.CrossCase):
    embed_dim: int = harness.EMBED_DIM

    @property
    def peers(self) -> dict:
        return {}

    @property
    def id(self) -> str:
        return f"cross-formulation-M{self.sets}-K{self.embed_dim}"

    @property
    def title(self) -> str:
        return f"reference cross_network fwd+bwd M={self.sets} K={self.embed_dim}"

    def variants(self) -> list[str]:
        # with several sets the reference is the batched formulation itself
        return [
            harness.BASELINE,
            *(f for f in FORMULATIONS if self.sets == 1 or f != "single_set_batched"),
        ]

    def inputs(self, seed: int) -> dict:
        g = torch.Generator(device=harness.DEVICE).manual_seed(seed)
        B, M, L, D = (
            harness.OP_BATCH,
            self.sets,
            harness.CROSS_LAYERS,
            harness.NUM_FIELDS * self.embed_dim,
        )

        def randn(*shape, scale=1.0):
            return (
                torch.randn(*shape, generator=g, device=harness.DEVICE) * scale
            ).requires_grad_()

        return {
            "x0": randn(B, M, D, scale=0.1),
            "weight": randn(L, M, D, D, scale=D**-0.5),
            "bias": randn(L, M, D, scale=0.01),
            "grad_out": torch.randn(B, M, D, generator=g, device=harness.DEVICE),
        }

    def prepare(self) -> harness.CaseData:
        data = super().prepare()
        cost = costs.cross_network(
            harness.OP_BATCH,
            self.sets,
            harness.NUM_FIELDS * self.embed_dim,
            harness.CROSS_LAYERS,
            backward=True,
        )
        return harness.CaseData(pool=data.pool, cost=cost, tol=1e-4)

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        fn = reference.cross_network if variant == "eager" else FORMULATIONS[variant]
        return harness.op_runner(fn, ("x0", "weight", "bias"), data.pool, backward=True)


@dataclass(frozen=True)
class DropoutCase(harness.Case):
    """ReLU then dropout (p 0.2) on one hidden activation [B, M*400], forward and backward."""

    width: int
    kind = "op"

    @property
    def id(self) -> str:
        return f"dropout-fwdbwd-{self.width}"

    @property
    def title(self) -> str:
        return f"ReLU + dropout fwd+bwd [{harness.MODEL_BATCH}, {self.width}]"

    def variants(self) -> list[str]:
        return [harness.BASELINE, "torch_dropout"]

    def prepare(self) -> harness.CaseData:
        def item(seed):
            g = torch.Generator(device=harness.DEVICE).manual_seed(seed)
            shape = (harness.MODEL_BATCH, self.width)
            return {
                "x": torch.randn(*shape, generator=g, device=harness.DEVICE).requires_grad_(),
                "grad_out": torch.randn(*shape, generator=g, device=harness.DEVICE),
            }

        pool = harness.build_pool(item, harness.tensor_bytes)
        n = harness.MODEL_BATCH * self.width
        # in, grad out, out and grad in once each (the mask not counted)
        return harness.CaseData(pool=pool, tol=0.0, cost=costs.Cost(4 * 4 * n, 0))

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        drop = Dropout(0.2) if variant == "eager" else nn.Dropout(0.2)
        runner = harness.op_runner(lambda x: drop(torch.relu(x)), ("x",), data.pool, True)

        # The masks are random: check that the variant is a dropout of the same input (every
        # output is 0 or x/(1-p), and the gradient is the output's mask), not bitwise equality.
        def check():
            got = runner.call(data.pool[0])
            x, out = data.pool[0]["x"].detach(), got["out"].detach()
            scaled = torch.relu(x) / 0.8
            keep = out != 0
            ok = torch.equal(out[keep], scaled[keep]) and torch.allclose(
                got["grad_x"][keep], data.pool[0]["grad_out"][keep] / 0.8
            )
            return {"out": torch.tensor(float(ok))}

        return harness.Runner(call=runner.call, pool=data.pool, check=check)


@dataclass(frozen=True)
class AdamStepCase(harness.Case):
    """One Adam step (lr 1e-3, weight decay 1e-6) over the parameters of an ME-DCNv2 x1 at
    Criteo's full cardinalities (11.8M parameters), from fixed gradients."""

    kind = "op"
    id = "adam-step-dcnv2-criteo-x1"
    title = "Adam step, ME-DCNv2 x1 parameters at full Criteo size"

    def variants(self) -> list[str]:
        return [harness.BASELINE, "adam_unfused"]

    def prepare(self) -> harness.CaseData:
        torch.manual_seed(0)
        model = fastme.models.build(
            "dcnv2", harness.CRITEO_FIELD_DIMS, 1, multi=True, backend="reference"
        ).to(harness.DEVICE)
        n = sum(p.numel() for p in model.parameters())
        # read parameter, gradient and both moments, write parameter and moments
        return harness.CaseData(
            pool=[None], tol=1e-5, extra={"model": model}, cost=costs.Cost(7 * 4 * n, 0)
        )

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        g = torch.Generator(device=harness.DEVICE).manual_seed(1)
        params = [p.detach().clone().requires_grad_() for p in data.extra["model"].parameters()]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, device=harness.DEVICE) * 1e-3
        fused = True if variant == "eager" else None  # None: torch's default implementation
        optimizer = torch.optim.Adam(
            params, lr=bench_training.LR, weight_decay=bench_training.WEIGHT_DECAY, fused=fused
        )

        def check():
            fresh = [p.detach().clone().requires_grad_() for p in params]
            for f, p in zip(fresh, params):
                f.grad = p.grad
            torch.optim.Adam(
                fresh, lr=bench_training.LR, weight_decay=bench_training.WEIGHT_DECAY, fused=fused
            ).step()
            return {"out": torch.cat([f.detach().reshape(-1) for f in fresh])}

        return harness.Runner(call=lambda _: optimizer.step(), pool=[None], check=check)


def _with_torch_dropout(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))
    return model


@dataclass(frozen=True)
class StepAblationCase(bench_training.ModelCase):
    """fastme's training step vs the same step with one CPU-path choice undone."""

    @property
    def peers(self) -> dict:
        return {}

    @property
    def id(self) -> str:
        return f"{self.model}-x{self.scale}-train-ablation"

    @property
    def title(self) -> str:
        return f"ME-{bench_training.BENCH_MODELS[self.model]} x{self.scale} train step: CPU choices"

    def variants(self) -> list[str]:
        return [harness.BASELINE, "torch_dropout", "adam_unfused"]

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        if variant == "eager":
            return super().runner(variant, data)
        model = copy.deepcopy(data.extra["model"])
        if variant == "torch_dropout":
            model = _with_torch_dropout(model)
            optimizer = bench_training.fastme_optimizer(model)
        else:
            optimizer = torch.optim.Adam(
                model.parameters(), lr=bench_training.LR, weight_decay=bench_training.WEIGHT_DECAY
            )
        return self.fastme_runner(model, optimizer, data)


CASES = [
    CrossFormulationCase(4, True, False),
    CrossFormulationCase(1, True, False, 40),
    DropoutCase(4 * 400),
    AdamStepCase(),
    StepAblationCase("dcnv2", 4, True),
]


@pytest.mark.parametrize("case", harness.params(CASES))
def test_cpu_path(benchmark, case):
    harness.run(benchmark, case)
