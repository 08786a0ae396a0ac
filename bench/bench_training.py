"""One training step (forward, backward, Adam) and one inference forward of ME-DCNv2, ME-NFwFM
and ME-DNN at scales 1, 4 and 10, and the training step of SE-DCNv2 at scale 4 (K = 40; at scale 1
SE and ME are the same model). Every DCNv2 step is also timed against two peers of the same
model: the paper code's way of writing it (one nn.Embedding per set, a Python loop over sets,
nn.Linear cross layers, sigmoid + BCELoss, torch's default Adam), and the same with
DeepCTR-Torch's matrix CrossNet as each set's cross network."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import costs
import fastme.models
import harness
from bench_cross_network import PaperStyleCross
from harness import DEVICE, FIELD_DIMS, MODEL_BATCH

BENCH_MODELS = {"dcnv2": "DCNv2", "nfwfm": "NFwFM", "dnn": "DNN"}
SE_SCALES = {"dcnv2": (4,)}  # SE training steps besides the ME ones (SE x1 is ME x1)
DCN_PEERS = {
    "paper_style": "the paper code's DCNv2: one nn.Embedding per set, Python loop over sets, "
    "nn.Linear cross layers, sigmoid + BCELoss, default Adam",
    "deepctr": "the paper code's DCNv2 with DeepCTR-Torch's CrossNet(parameterization='matrix') "
    "as each set's cross network",
}
LR, WEIGHT_DECAY = 1e-3, 1e-6  # the paper's Adam


def fastme_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer fastme.train builds: Adam with coupled L2, the fused kernel (CPU and CUDA)."""
    return torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)


def _loss(model, logits, y):
    loss = F.binary_cross_entropy_with_logits(logits, y)
    reg = model.regularization_loss()
    return loss if reg is None else loss + reg


def _block(in_dim, out_dim, dropout):
    return nn.Sequential(
        nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(), nn.Dropout(dropout)
    )


def _deepctr_cross(dim: int, layers: int) -> nn.Module:
    interaction = harness.require("deepctr_torch.layers.interaction", "deepctr_torch")
    return interaction.CrossNet(
        dim, layer_num=layers, parameterization="matrix", device=str(DEVICE)
    )


class PaperStyleDCNv2(nn.Module):
    """DCNv2 as the paper's code writes it (see the module docstring), SE (num_sets=1) or ME;
    logits out. ``cross="deepctr"`` uses DeepCTR-Torch's matrix CrossNet for each set's cross
    network instead of the nn.Linear layers."""

    def __init__(
        self,
        field_dims,
        num_sets,
        embed_dim=10,
        layers=4,
        hidden=400,
        dropout=0.2,
        cross="paper_style",
    ):
        super().__init__()
        dims = torch.tensor(field_dims)
        self.register_buffer("offsets", torch.cumsum(dims, 0) - dims)
        rows, d = int(dims.sum()), len(field_dims) * embed_dim
        self.embeddings = nn.ModuleList(nn.Embedding(rows, embed_dim) for _ in range(num_sets))
        for e in self.embeddings:
            nn.init.xavier_uniform_(e.weight)
        self.cross_kind = cross
        make_cross = _deepctr_cross if cross == "deepctr" else PaperStyleCross
        self.cross = nn.ModuleList(make_cross(d, layers) for _ in range(num_sets))
        self.projections = nn.ModuleList(_block(d, hidden, dropout) for _ in range(num_sets))
        self.mlp = nn.Sequential(_block(hidden, hidden, dropout), nn.Linear(hidden, 1))

    def forward(self, x):
        x = x + self.offsets
        outs = []
        for emb, cross, projection in zip(self.embeddings, self.cross, self.projections):
            e = emb(x).view(x.shape[0], -1)
            outs.append(projection(cross(e)))
        return self.mlp(torch.stack(outs, 1).mean(1)).squeeze(1)

    @torch.no_grad()
    def copy_from(self, model) -> None:
        """Take a fastme DCNv2's weights (so both compute the same function)."""
        hidden = self.mlp[1].in_features
        block = model.projection.block
        for m, (emb, cross, proj) in enumerate(zip(self.embeddings, self.cross, self.projections)):
            emb.weight.copy_(model.embedding.weight[:, m])
            if self.cross_kind == "deepctr":  # kernels [L, D, D], bias [L, D, 1]
                cross.kernels.copy_(model.cross_weight[:, m])
                cross.bias.copy_(model.cross_bias[:, m].unsqueeze(-1))
            else:
                for layer, lin in enumerate(cross.layers):
                    lin.weight.copy_(model.cross_weight[layer, m])
                    lin.bias.copy_(model.cross_bias[layer, m])
            proj[0].weight.copy_(block.linear.weight[m])
            proj[0].bias.copy_(block.linear.bias[m])
            part = slice(m * hidden, (m + 1) * hidden)
            proj[1].weight.copy_(block.norm.weight[part])
            proj[1].bias.copy_(block.norm.bias[part])
        self.mlp[0].load_state_dict(model.head.block.state_dict())
        self.mlp[1].load_state_dict(model.head.out.state_dict())

    def grads_as_fastme(self, grads: dict) -> dict:
        """Gradients of the shared parameters under fastme's names and layouts."""
        sets = range(len(self.embeddings))
        if self.cross_kind == "deepctr":
            weight = torch.stack([grads[f"cross.{m}.kernels"] for m in sets], 1)
            bias = torch.stack([grads[f"cross.{m}.bias"].squeeze(-1) for m in sets], 1)
        else:
            layers = range(len(self.cross[0].layers))
            weight = torch.stack(
                [torch.stack([grads[f"cross.{m}.layers.{l}.weight"] for m in sets]) for l in layers]
            )
            bias = torch.stack(
                [torch.stack([grads[f"cross.{m}.layers.{l}.bias"] for m in sets]) for l in layers]
            )
        return {
            "grad_embedding.weight": torch.stack(
                [grads[f"embeddings.{m}.weight"] for m in sets], 1
            ),
            "grad_cross_weight": weight,
            "grad_cross_bias": bias,
        }


def _without_dropout(model, fn):
    """Run ``fn`` with every dropout off: its masks depend on how random numbers are drawn
    (compiled code draws them differently), so only without it do all variants compute the same
    function. BatchNorm stays in training mode."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in dropouts:
        m.eval()
    try:
        return fn()
    finally:
        for m in dropouts:
            m.train()


@dataclass(frozen=True)
class ModelCase(harness.Case):
    """A model at one scale: ME (``multi``, M = scale sets of the base size, ids
    ``{model}-x{scale}-...``) or SE (one set of size base * scale, ids
    ``{model}-se-x{scale}-...``)."""

    model: str
    scale: int
    train: bool
    multi: bool = True
    kind = "model"

    @property
    def peers(self) -> dict:
        return DCN_PEERS if self.model == "dcnv2" and self.train else {}

    @property
    def id(self) -> str:
        se = "" if self.multi else "se-"
        return f"{self.model}-{se}x{self.scale}-{'train' if self.train else 'infer'}"

    @property
    def title(self) -> str:
        kind = "ME" if self.multi else "SE"
        return (
            f"{kind}-{BENCH_MODELS[self.model]} x{self.scale} "
            f"{'train step' if self.train else 'inference'}"
        )

    def variants(self) -> list[str]:
        return [*harness.own_variants(), *self.peers]

    def prepare(self) -> harness.CaseData:
        torch.manual_seed(0)
        model = fastme.models.build(
            self.model, FIELD_DIMS, self.scale, multi=self.multi, backend="reference"
        ).to(DEVICE)

        def batch(seed):
            g = torch.Generator(device=DEVICE).manual_seed(seed)
            y = torch.rand(MODEL_BATCH, generator=g, device=DEVICE).round()
            return harness.random_indices(g, MODEL_BATCH), y

        pool = harness.build_pool(batch, harness.tensor_bytes)
        # 1e-2: besides TF32 kernels on CUDA, torch.compile's float32 code for this BatchNorm
        # network gives gradients a few 1e-3 off the float64 truth on a CPU (eager: 1e-6).
        return harness.CaseData(
            pool=pool,
            tol=1e-2,
            extra={"model": model},
            cost=costs.model_step(model, MODEL_BATCH, train=self.train),
        )

    def runner(self, variant: str, data: harness.CaseData) -> harness.Runner:
        if variant in DCN_PEERS:
            return self._paper_style(data, cross=variant)
        model = copy.deepcopy(data.extra["model"])  # every variant starts from the same weights
        model.backend = "reference" if variant in ("eager", "compile") else variant
        optimizer = fastme_optimizer(model) if self.train else None
        return self.fastme_runner(model, optimizer, data, compile=variant == "compile")

    def fastme_runner(
        self, model, optimizer, data: harness.CaseData, compile: bool = False
    ) -> harness.Runner:
        """The step (or inference) of a fastme model, optionally through torch.compile."""
        forward = harness.compiled(model) if compile else model
        if not self.train:
            model.eval()

            def infer(s):
                with torch.no_grad():
                    return forward(s[0])

            return harness.Runner(
                call=infer, pool=data.pool, check=lambda: {"out": infer(data.pool[0])}
            )

        return _training_runner(
            model,
            forward,
            lambda logits, y: _loss(model, logits, y),
            optimizer,
            data,
            lambda grads: {f"grad_{n}": g for n, g in grads.items()},
        )

    def _paper_style(self, data: harness.CaseData, cross: str) -> harness.Runner:
        source = data.extra["model"]
        model = PaperStyleDCNv2(
            source.field_dims,
            source.num_sets,
            source.embed_dim,
            source.cross_weight.shape[0],
            source.hidden_dim,
            source.dropout,
            cross=cross,
        ).to(DEVICE)
        model.copy_from(source)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

        return _training_runner(
            model,
            model,
            lambda logits, y: F.binary_cross_entropy(torch.sigmoid(logits), y),
            optimizer,
            data,
            model.grads_as_fastme,
        )


def _training_runner(
    model, forward, loss_fn, optimizer, data: harness.CaseData, named_grads
) -> harness.Runner:
    """A timed optimizer step of `model` through `forward`, and its check: one forward+backward
    without the step, from the shared weights; `named_grads` maps {parameter name: gradient} to
    fastme's names."""

    def step(s):
        x, y = s
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss

    def check():
        def grads():
            x, y = data.pool[0]
            logits = forward(x)
            loss = loss_fn(logits, y)
            names, params = zip(*model.named_parameters())
            return {
                "out": logits,
                "loss": loss,
                **named_grads(dict(zip(names, torch.autograd.grad(loss, params)))),
            }

        return _without_dropout(model, grads)

    return harness.Runner(call=step, pool=data.pool, check=check)


CASES = [
    ModelCase(model, scale, train)
    for model in BENCH_MODELS
    for train in (True, False)
    for scale in harness.MODEL_SCALES
]
CASES += [
    ModelCase(model, scale, True, multi=False)
    for model, scales in SE_SCALES.items()
    for scale in scales
]


@pytest.mark.parametrize("case", harness.params(CASES))
def test_model(benchmark, case):
    harness.run(benchmark, case)
