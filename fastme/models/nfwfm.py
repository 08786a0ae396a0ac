import torch
from torch import nn

from fastme import ops
from fastme.models.base import ProjectedModel
from fastme.models.layers import Dropout


class NFwFM(ProjectedModel):
    """NFwFM: field-weighted pooling sum_{i,j} r_ij e_i ⊙ e_j -> BatchNorm -> Dropout -> MLP.

    Each set has its own full N x N weight matrix r ~ N(0, 1). ``field_pairs="all"`` (default,
    the paper's code) sums all ordered pairs including i == j; ``"upper"`` keeps only i < j as in
    the original FwFM. Base embedding size 50.
    """

    base_embed_dim = 50

    def __init__(
        self,
        field_dims,
        embed_dim=50,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        nonlinear_projection=True,
        field_pairs="all",
    ):
        super().__init__(
            field_dims, embed_dim, num_sets, backend, hidden_dim, dropout, nonlinear_projection
        )
        if field_pairs not in ("all", "upper"):
            raise ValueError(f"field_pairs must be 'all' or 'upper', got {field_pairs!r}")
        n = self.num_fields
        self.field_pairs = field_pairs
        self.field_weights = nn.Parameter(torch.randn(self.num_sets, n, n))
        mask = torch.ones(n, n) if field_pairs == "all" else torch.ones(n, n).triu(1)
        self.register_buffer("pair_mask", mask, persistent=False)
        self.pool_norm = nn.BatchNorm1d(self.num_sets * self.embed_dim)
        self.pool_dropout = Dropout(dropout)
        self._build_projection(self.embed_dim)

    def effective_field_weights(self):
        if self.field_pairs == "all":
            return self.field_weights
        return self.field_weights * self.pair_mask

    def set_features(self, x):  # the lookup fused with the pooling
        e = self.embedding
        return self._normalise_pooled(
            ops.pooled_lookup(
                e.weight,
                x,
                e.offsets,
                self.effective_field_weights(),
                field_dims=e.field_dims,
                backend=self.backend,
            )
        )

    def set_features_from_embeddings(self, emb):
        return self._normalise_pooled(
            ops.fwfm_pooling(emb, self.effective_field_weights(), backend=self.backend)
        )

    def _normalise_pooled(self, pooled):
        b = pooled.shape[0]
        pooled = self.pool_norm(pooled.reshape(b, self.num_sets * self.embed_dim))
        pooled = pooled.reshape(b, self.num_sets, self.embed_dim)
        return self.pool_dropout(pooled)
