"""Per-set DCNv2 cross network (4 layers), alone and with the lookup fused in front, forward and
forward+backward; the cross network alone also against DeepCTR-Torch's matrix CrossNet and
the paper code's nn.Linear cross layers, one network per set in a Python loop (how a user of
those builds M sets)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import costs
import harness
from harness import CROSS_LAYERS, DEVICE, EMBED_DIM, NUM_FIELDS, NUM_ROWS, OP_BATCH

CROSS_PEERS = {
    "deepctr": "DeepCTR-Torch CrossNet(parameterization='matrix'), one per set, Python loop",
    "paper_style": "the paper code's cross layers: nn.Linear(D, D) per layer, x0 * lin(x) + x, "
    "one stack per set, Python loop",
}


class PaperStyleCross(nn.Module):
    """The reference code's DCNv2 cross network for one set (as FuxiCTR's CrossNetV2 too)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0):
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


def _peer_nets(variant: str, weight: torch.Tensor, bias: torch.Tensor) -> list[nn.Module]:
    """One peer network per set, holding that set's weights [L, D, D] and biases [L, D]."""
    L, M, D, _ = weight.shape
    nets = []
    for m in range(M):
        if variant == "deepctr":
            interaction = harness.require("deepctr_torch.layers.interaction", "deepctr_torch")
            net = interaction.CrossNet(
                D, layer_num=L, parameterization="matrix", device=str(DEVICE)
            )
            with torch.no_grad():
                net.kernels.copy_(weight[:, m])
                net.bias.copy_(bias[:, m].unsqueeze(-1))
        else:
            net = PaperStyleCross(D, L).to(DEVICE)
            with torch.no_grad():
                for layer, lin in enumerate(net.layers):
                    lin.weight.copy_(weight[layer, m])
                    lin.bias.copy_(bias[layer, m])
        nets.append(net)
    return nets


def _peer_grads(variant: str, nets, grads) -> dict:
    """Per-set parameter gradients -> fastme's stacked [L, M, D, D] / [L, M, D]."""
    per_set = len(grads) // len(nets)
    w, b = [], []
    for m in range(len(nets)):
        g = grads[m * per_set : (m + 1) * per_set]
        if variant == "deepctr":
            w.append(g[0])
            b.append(g[1].squeeze(-1))
        else:
            w.append(torch.stack(g[0::2]))
            b.append(torch.stack(g[1::2]))
    return {"grad_weight": torch.stack(w, 1), "grad_bias": torch.stack(b, 1)}


@dataclass(frozen=True)
class CrossCase(harness.Case):
    sets: int
    backward: bool
    fused_lookup: bool  # lookup_cross_network (x0 gathered from a table) instead of x0 given
    kind = "op"

    @property
    def peers(self) -> dict:
        return {} if self.fused_lookup else CROSS_PEERS

    @property
    def op(self) -> str:
        return "lookup_cross_network" if self.fused_lookup else "cross_network"

    @property
    def args(self) -> tuple[str, ...]:
        return (("table", "indices", "offsets") if self.fused_lookup else ("x0",)) + (
            "weight",
            "bias",
        )

    @property
    def id(self) -> str:
        return (
            f"{'lookup_cross' if self.fused_lookup else 'cross'}-"
            f"{'fwdbwd' if self.backward else 'fwd'}-M{self.sets}"
        )

    @property
    def title(self) -> str:
        return f"{self.op} {'fwd+bwd' if self.backward else 'fwd'} M={self.sets}"

    def variants(self) -> list[str]:
        return [*harness.own_variants(), *self.peers]

    def inputs(self, seed: int) -> dict:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        B, M, L, D = OP_BATCH, self.sets, CROSS_LAYERS, NUM_FIELDS * EMBED_DIM

        def randn(*shape, scale=1.0):
            t = torch.randn(*shape, generator=g, device=DEVICE) * scale
            return t.requires_grad_(self.backward)

        item = {}
        if self.fused_lookup:
            item["table"] = randn(NUM_ROWS, M, EMBED_DIM, scale=0.1)
            item["indices"] = harness.random_indices(g, B)
            item["offsets"] = harness.field_offsets()
        else:
            item["x0"] = randn(B, M, D, scale=0.1)
        item["weight"] = randn(L, M, D, D, scale=D**-0.5)  # std of the model's init
        item["bias"] = randn(L, M, D, scale=0.01)
        if self.backward:
            item["grad_out"] = torch.randn(B, M, D, generator=g, device=DEVICE)
        return item

    def prepare(self) -> harness.CaseData:
        pool = harness.build_pool(self.inputs, harness.tensor_bytes)
        B, N, M, K, L = OP_BATCH, NUM_FIELDS, self.sets, EMBED_DIM, CROSS_LAYERS
        if self.fused_lookup:
            cost = costs.lookup_cross_network(B, N, M, K, L, NUM_ROWS, backward=self.backward)
        else:
            cost = costs.cross_network(B, M, N * K, L, backward=self.backward)
        # matmuls may sum in another order, and on CUDA use TF32; a bug gives 1e-1 or more
        return harness.CaseData(pool=pool, cost=cost, tol=1e-2 if DEVICE.type == "cuda" else 1e-4)

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        if variant in CROSS_PEERS:
            return self._peer(variant, data)
        return harness.own_op_runner(variant, self.op, self.args, data.pool, self.backward)

    def _peer(self, variant: str, data: harness.CaseData) -> harness.Runner:
        pool = []
        for s in data.pool:
            nets = _peer_nets(variant, s["weight"].detach(), s["bias"].detach())
            params = [p for net in nets for p in net.parameters()]
            pool.append({**s, "nets": nets, "params": params})

        def call(item):
            x0 = item["x0"]
            out = torch.stack([net(x0[:, m]) for m, net in enumerate(item["nets"])], 1)
            if not self.backward:
                return {"out": out}
            grads = torch.autograd.grad(out, [x0, *item["params"]], item["grad_out"])
            return {
                "out": out,
                "grad_x0": grads[0],
                **_peer_grads(variant, item["nets"], grads[1:]),
            }

        return harness.Runner(call=call, pool=pool, check=lambda: call(pool[0]))


CASES = [
    CrossCase(m, backward, fused)
    for fused in (False, True)
    for m in harness.OP_SETS
    for backward in (False, True)
]


@pytest.mark.parametrize("case", harness.params(CASES))
def test_cross_network(benchmark, case):
    harness.run(benchmark, case)
