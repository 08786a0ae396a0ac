"""The common shape of every SE/ME model: a multi-set embedding, per-set interaction, mean over
sets, shared MLP. ``num_sets=1`` is single-embedding (SE); ``num_sets=M>1`` multi-embedding (ME)."""

from __future__ import annotations

import torch
from torch import nn

from fastme import ops
from fastme.models import layers
from fastme.models.layers import MultiSetEmbedding, OutputHead, SetProjection


class MultiEmbeddingModel(nn.Module):
    """Base class. Subclasses implement :meth:`interact_embeddings` (gathered embeddings
    [B, M, N, K] -> logits [B]); a backbone whose interaction has a kernel fused with the lookup
    also overrides :meth:`interact` (indices -> logits) to use it. Both paths compute the same
    function, so an embedding gathered elsewhere (e.g. a sharded TorchRec table, see
    fastme.distributed) goes through :meth:`forward_embeddings`.

    Args:
        field_dims: cardinality of each of the N fields.
        embed_dim: K, the size of each embedding set.
        num_sets: M, the number of independent embedding sets (1 = SE).
        backend: "auto" | "reference" | "triton" | "cuda"; selects the implementation of the fused
            ops only, never the parameters, so the state dict is the same on every backend.
        hidden_dim: width of every hidden layer (400 in the paper).
        dropout: dropout of every hidden block (0.2 in the paper's code).
    """

    #: Base embedding size of the paper's scaled variants (see :func:`fastme.models.build`).
    base_embed_dim = 10
    #: The mode of :func:`fastme.models.build` when it is given no ``multi``.
    default_multi = False

    #: Give the table a sparse gradient (the touched rows only, see
    #: ``ops.multi_embedding_lookup(sparse_grad=True)``) for a sparse table optimizer. The
    #: lookups fused with an interaction then run unfused (same function). Not part of the spec
    #: or the weights: the trainer sets it while it trains.
    sparse_table: bool = False

    def __init__(
        self,
        field_dims,
        embed_dim: int = 10,
        num_sets: int = 1,
        backend: str = "auto",
        hidden_dim: int = 400,
        dropout: float = 0.2,
    ):
        super().__init__()
        field_dims = [int(d) for d in field_dims]
        if not field_dims or min(field_dims) < 1:
            raise ValueError(
                f"field_dims must be a non-empty list of positive ints, got {field_dims}"
            )
        for name, value in (
            ("embed_dim", embed_dim),
            ("num_sets", num_sets),
            ("hidden_dim", hidden_dim),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.field_dims = tuple(field_dims)
        self.num_fields = len(field_dims)
        self.embed_dim = int(embed_dim)
        self.num_sets = int(num_sets)
        self.hidden_dim = int(hidden_dim)
        self.dropout = float(dropout)
        self.backend = backend
        self.embedding = MultiSetEmbedding(field_dims, self.num_sets, self.embed_dim)

    # -- backend ------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {value!r}")
        self._backend = value
        layers.share_backend(self, value)

    def __setattr__(self, name, value):
        # A submodule assigned after the backend (every model's layers) takes it on.
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) and "_backend" in self.__dict__:
            layers.share_backend(value, self._backend)

    # -- analysis -----------------------------------------------------------------------------
    def embedding_tables(self) -> list[torch.Tensor]:
        """The learned embeddings for analysis: one tensor per field, shape [M, D_i, K] (detached
        views; set m of field i is ``tables[i][m]``)."""
        return self.embedding.field_tables()

    def regularization_loss(self) -> torch.Tensor | None:
        """Extra training penalty added to the loss by the trainer (None: no penalty). Models with a
        regulariser (e.g. the orthogonality-regularised DCNv2) override this."""
        return None

    # -- forward ------------------------------------------------------------------------------
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a LongTensor [B, N], got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.num_fields:
            raise ValueError(
                f"x must have shape [B, {self.num_fields}] (one index per field), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"x must hold int32/int64 per-field indices, got {x.dtype}")

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] indices -> [B, M, N, K] embeddings through the fused lookup op."""
        e = self.embedding
        return ops.multi_embedding_lookup(
            e.weight,
            x,
            e.offsets,
            field_dims=e.field_dims,
            backend=self.backend,
            sparse_grad=self.sparse_table,
        )

    def flat_sets(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, M, N, K] -> [B, M, N*K]: each set's field-major concatenation."""
        return emb.reshape(emb.shape[0], self.num_sets, self.num_fields * self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-field indices [B, N] -> logits [B]."""
        self._check_input(x)
        return self.interact(x)

    def forward_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """Gathered embeddings [B, M, N, K] (what :meth:`lookup` returns) -> logits [B]; the same
        function as :meth:`forward` on the indices they were gathered with. ``self.embedding`` is
        not used."""
        expected = (self.num_sets, self.num_fields, self.embed_dim)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 4 or tuple(emb.shape[1:]) != expected:
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(
                f"emb must have shape [B, {', '.join(map(str, expected))}] "
                f"([B, M, N, K]), got {got}"
            )
        return self.interact_embeddings(emb)

    def interact(self, x: torch.Tensor) -> torch.Tensor:
        """Indices [B, N] -> logits [B]; by default the lookup, then :meth:`interact_embeddings`."""
        return self.interact_embeddings(self.lookup(x))

    def interact_embeddings(self, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ProjectedModel(MultiEmbeddingModel):
    """Models whose interaction is followed by the ME non-linear projection (Appendix C.2: DNN,
    IPNN, NFwFM, DCNv2): per-set interaction features [B, M, F] -> per-set projection -> mean ->
    Block -> Linear. With M=1 the projection is simply the SE model's first hidden block."""

    def __init__(
        self,
        field_dims,
        embed_dim=10,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        nonlinear_projection: bool = True,
    ):
        super().__init__(field_dims, embed_dim, num_sets, backend, hidden_dim, dropout)
        self.nonlinear_projection = nonlinear_projection

    def _build_projection(self, in_dim: int, num_sets: int | None = None) -> None:
        """The per-set projection (of ``num_sets`` sets, default M) and the shared head."""
        self.projection = SetProjection(
            self.num_sets if num_sets is None else num_sets,
            in_dim,
            self.hidden_dim,
            self.dropout,
            nonlinear=self.nonlinear_projection,
        )
        self.head = OutputHead(self.hidden_dim, self.dropout)

    #: The paper's Figure 10c ablation (``shared_interaction=True`` on the backbones that offer
    #: it): the M sets keep their own embeddings but share one interaction module and one
    #: projection block, so the sets are no longer separated by their interaction.
    shared_interaction = False

    def _set_shared_interaction(self, shared_interaction) -> int:
        """Validate the option; returns how many sets own an interaction and a projection."""
        if not isinstance(shared_interaction, bool):
            raise TypeError(f"shared_interaction must be a bool, got {shared_interaction!r}")
        self.shared_interaction = shared_interaction
        return 1 if shared_interaction else self.num_sets

    def interact(self, x):
        # the fused lookups' gradient is dense, and a shared module takes the sets as rows:
        # gather, then interact
        if self.sparse_table or self.shared_interaction:
            return self.interact_embeddings(self.lookup(x))
        return self._project(self.set_features(x))

    def interact_embeddings(self, emb):
        return self._project(self.set_features_from_embeddings(emb))

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        """Per-set features [B, M, F] -> logits: each set's projection, their mean, the head.
        With a shared interaction the one projection block serves every set (its BatchNorm sees
        the B*M set rows of a batch together)."""
        if self.shared_interaction:
            batch, sets, width = features.shape
            projected = self.projection(
                features.reshape(batch * sets, 1, width), backend=self.backend
            )
            return self.head(projected.reshape(batch, sets, projected.shape[-1]).mean(dim=1))
        return self.head(self.projection(features, backend=self.backend))

    def set_features(self, x: torch.Tensor) -> torch.Tensor:
        """Indices [B, N] -> per-set interaction features [B, M, F]; fused backbones override."""
        return self.set_features_from_embeddings(self.lookup(x))

    def set_features_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
