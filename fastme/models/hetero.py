"""Heterogeneous multi-embedding: the embedding sets feed different kinds of interaction experts,
whose outputs a gate combines before the shared MLP (Pan et al., KDD 2024, "Ads Recommendation in
a Collapsed and Entangled World": a heterogeneous mixture of experts with multi-embedding).

Every expert is an existing backbone run on its own group of sets: its per-set interaction (the
fused cross network or FwFM pooling, the CIN, the attention stack, FinalMLP's two streams;
batched over the group's sets) and a per-set non-linear projection to the hidden size (Appendix
E) followed by the mean over the group's sets. The backbone's own table, logit layers and head
are not used: one table holds every set, and one head follows the gate. See docs/design.md,
"Heterogeneous multi-embedding".
"""

from __future__ import annotations

import torch
from torch import nn

from fastme.models.autoint import AutoInt
from fastme.models.base import MultiEmbeddingModel, ProjectedModel
from fastme.models.dcnv2 import DCNv2
from fastme.models.dnn import DNN
from fastme.models.finalmlp import FinalMLP
from fastme.models.ipnn import IPNN
from fastme.models.layers import OutputHead, SetProjection
from fastme.models.nfwfm import NFwFM
from fastme.models.xdeepfm import xDeepFM

#: The kinds of expert: every backbone. The projected ones (``ProjectedModel``) bring their own
#: per-set projection; the others' per-set features get one here.
EXPERT_KINDS = {
    "dnn": DNN,
    "ipnn": IPNN,
    "nfwfm": NFwFM,
    "dcnv2": DCNv2,
    "xdeepfm": xDeepFM,
    "autoint": AutoInt,
    "finalmlp": FinalMLP,
}
#: What an expert drops of its backbone besides the table: the layers that lead to the backbone's
#: own logit (one head follows the gate). xDeepFM's DNN part and AutoInt's MLP are the dnn
#: expert's interaction, so they are not part of those experts.
DROPPED = {
    "xdeepfm": ("cin_out", "dnn_projection", "dnn_head"),
    "autoint": ("attention_out",),
    "finalmlp": ("fusion1", "fusion2", "fusion_bilinear"),
}
#: The default experts, in this order: ME with M sets takes the first min(M, 4) of them (one set
#: each up to 4 sets, equal groups beyond); SE gives all four the one set.
DEFAULT_EXPERTS = ("dcnv2", "nfwfm", "ipnn", "dnn")
GATES = ("softmax", "mean")
#: How fast the running average of the gate's weights follows training batches (as BatchNorm's).
GATE_MOMENTUM = 0.01


def parse_experts(experts) -> tuple[str, ...]:
    """``("dcnv2", "dnn")``, ``["dcnv2", "dnn"]`` or ``"dcnv2,dnn"`` (the command line's form)."""
    if isinstance(experts, str):
        experts = [e.strip() for e in experts.split(",") if e.strip()]
    if not isinstance(experts, (list, tuple)) or not experts:
        raise ValueError(f"experts must be a non-empty list of expert kinds, got {experts!r}")
    names = tuple(str(e).lower() for e in experts)
    unknown = [e for e in names if e not in EXPERT_KINDS]
    if unknown:
        raise ValueError(f"unknown expert kind(s) {unknown}; choose from {sorted(EXPERT_KINDS)}")
    if len(set(names)) != len(names):
        raise ValueError(
            f"experts names each kind once, got {list(names)}; give a kind more sets with "
            f"sets_per_expert"
        )
    return names


def equal_groups(num_sets: int, num_experts: int) -> tuple[int, ...]:
    """``num_sets`` sets in ``num_experts`` contiguous groups as equal as can be, the first groups
    one larger when it does not divide (scale 4, 3 experts: 2, 1, 1)."""
    q, r = divmod(num_sets, num_experts)
    return tuple(q + (i < r) for i in range(num_experts))


class Hetero(MultiEmbeddingModel):
    """Heterogeneous multi-embedding model.

    ME (``num_sets = M > 1``): the M sets are cut into contiguous groups, one per expert kind
    (``sets_per_expert``, default :func:`equal_groups`); expert e runs its backbone's per-set
    interaction and a per-set projection to H on its group and averages over the group -> [B, H]. SE
    (``num_sets = 1``): every expert reads the one set (experts on a shared embedding). A gate
    mixes the E expert outputs per sample; the shared Block -> Linear head follows.

    Args:
        experts: the expert kinds, each once (keys of :data:`EXPERT_KINDS`); default
            :data:`DEFAULT_EXPERTS` (ME: the first min(M, 4)).
        gate: "softmax": weights softmax(Linear(all sets' embeddings flattened)) per sample,
            initialised to the uniform mean (zero weight); "mean": the plain mean of the experts.
        sets_per_expert: sets of each expert, summing to M (ME only).
        expert_options: ``{kind: {option: value}}`` for an expert's constructor (e.g.
            ``{"dcnv2": {"num_cross_layers": 2}}``).
        nonlinear_projection: every expert's projection (Appendix E); True is the paper's rule.

    The experts ``xdeepfm``, ``autoint`` and ``finalmlp`` project the CIN's pooled maps, the
    flattened attention maps and ``[o1, o2, o1 * o2]`` of FinalMLP's streams (each backbone's
    ``set_features_from_embeddings``); AutoInt's ``use_mlp`` is off (the dnn expert is that MLP).

    ``gate_average`` (a buffer, saved with the weights) is the running mean over training batches
    of the gate's weights, what ``fastme analyze`` reports.
    """

    default_multi = True

    def __init__(
        self,
        field_dims,
        embed_dim=10,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        experts=None,
        gate="softmax",
        sets_per_expert=None,
        expert_options=None,
        nonlinear_projection=True,
    ):
        super().__init__(field_dims, embed_dim, num_sets, backend, hidden_dim, dropout)
        if experts is None:
            experts = DEFAULT_EXPERTS if num_sets == 1 else DEFAULT_EXPERTS[:num_sets]
        self.expert_kinds = parse_experts(experts)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.gate = gate
        e, m = len(self.expert_kinds), self.num_sets
        if m == 1:
            if sets_per_expert is not None:
                raise ValueError("sets_per_expert needs several sets (ME); an SE model has one")
            self.set_ranges = tuple((0, 1) for _ in range(e))
        else:
            if sets_per_expert is None:
                if m < e:
                    raise ValueError(
                        f"{e} experts need at least {e} embedding sets (one each), got {m}; "
                        f"raise the scale or give fewer experts"
                    )
                sets_per_expert = equal_groups(m, e)
            counts = [int(c) for c in sets_per_expert]
            if len(counts) != e or min(counts) < 1 or sum(counts) != m:
                raise ValueError(
                    f"sets_per_expert must give each of the {e} experts at least one set and "
                    f"sum to the {m} sets, got {list(sets_per_expert)}"
                )
            starts = [sum(counts[:i]) for i in range(e)]
            self.set_ranges = tuple((s, s + c) for s, c in zip(starts, counts))
        expert_options = dict(expert_options or {})
        stray = sorted(set(expert_options) - set(self.expert_kinds))
        if stray:
            raise ValueError(f"expert_options names kinds that are not experts: {stray}")
        self.experts = nn.ModuleList()
        for kind, (a, b) in zip(self.expert_kinds, self.set_ranges):
            options = dict(expert_options.get(kind) or {})
            cls = EXPERT_KINDS[kind]
            projected = issubclass(cls, ProjectedModel)
            if "nonlinear_projection" in options:  # one rule for every expert, set below
                raise ValueError(
                    f"expert_options: nonlinear_projection is the model's option (every "
                    f"expert's projection), not {kind}'s"
                )
            if kind == "ipnn":  # the ME rule follows the model's mode, not the group's size
                options.setdefault("concat_embeddings", m == 1)
            if kind == "autoint":
                if options.setdefault("use_mlp", False):
                    raise ValueError(
                        "expert_options: autoint's use_mlp is the dnn expert's interaction; "
                        "add dnn to experts instead"
                    )
            if projected:
                options["nonlinear_projection"] = nonlinear_projection
            # The expert is built on one row per field: it needs only N, K and its sets; its
            # table, head and logit layers are dropped (this model's one table and head serve
            # every expert).
            expert = cls(
                [1] * self.num_fields,
                embed_dim=self.embed_dim,
                num_sets=b - a,
                backend=backend,
                hidden_dim=self.hidden_dim,
                dropout=self.dropout,
                **options,
            )
            for name in ("embedding", "head", *DROPPED.get(kind, ())):
                if hasattr(expert, name):
                    delattr(expert, name)
            if not projected:  # the App. E projection that the projected backbones build in
                expert.projection = SetProjection(
                    b - a,
                    expert.set_feature_dim,
                    self.hidden_dim,
                    self.dropout,
                    nonlinear=nonlinear_projection,
                )
            self.experts.append(expert)
        self.gate_layer = None
        if gate == "softmax":
            self.gate_layer = nn.Linear(m * self.num_fields * self.embed_dim, e)
            nn.init.zeros_(self.gate_layer.weight)  # starts as the mean, learns away from it
            nn.init.zeros_(self.gate_layer.bias)
        self.register_buffer("gate_average", torch.full((e,), 1.0 / e))
        self.head = OutputHead(self.hidden_dim, self.dropout)

    # the backend reaches the experts, which call the fused ops
    def _set_backend(self, value: str) -> None:
        MultiEmbeddingModel.backend.fset(self, value)
        for expert in getattr(self, "experts", ()):
            expert.backend = value

    backend = property(MultiEmbeddingModel.backend.fget, _set_backend)

    def regularization_loss(self):
        losses = [r for r in (x.regularization_loss() for x in self.experts) if r is not None]
        return sum(losses) if losses else None

    def expert_sets(self) -> dict[str, list[int]]:
        """The sets each expert reads, by kind (analysis groups the sets by it)."""
        return {k: list(range(a, b)) for k, (a, b) in zip(self.expert_kinds, self.set_ranges)}

    def gate_weights(self, emb: torch.Tensor) -> torch.Tensor:
        """Gathered embeddings [B, M, N, K] -> the experts' weights [B, E] (rows sum to 1)."""
        b, e = emb.shape[0], len(self.experts)
        if self.gate_layer is None:
            return emb.new_full((b, e), 1.0 / e)
        flat = emb.reshape(b, self.gate_layer.in_features)
        return torch.softmax(self.gate_layer(flat), dim=-1)

    def expert_outputs(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, M, N, K] -> each expert's projected output [B, E, H]."""
        outs = []
        for expert, (a, b) in zip(self.experts, self.set_ranges):
            # a contiguous group of sets: the expert's fused op batches them
            features = expert.set_features_from_embeddings(emb[:, a:b].contiguous())
            outs.append(expert.projection(features, backend=expert.backend))
        return torch.stack(outs, dim=1)

    def interact_embeddings(self, emb):
        weights = self.gate_weights(emb)
        if self.training and weights.shape[0]:
            with torch.no_grad():
                self.gate_average.lerp_(weights.mean(0).to(self.gate_average), GATE_MOMENTUM)
        mixed = (weights.unsqueeze(-1) * self.expert_outputs(emb)).sum(dim=1)
        return self.head(mixed)
