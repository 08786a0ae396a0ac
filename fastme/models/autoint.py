import torch
from torch import nn

from fastme.models.base import MultiEmbeddingModel
from fastme.models.layers import OutputHead, SetLinear, SetProjection, SetSelfAttentionLayer


class AutoInt(MultiEmbeddingModel):
    """AutoInt(+): per-field projection K -> H, stacked multi-head self-attention over fields with
    residual and LayerNorm, ReLU, flatten, Linear -> logit; plus an MLP logit on the raw embeddings
    (``use_mlp``). ME: every set has its own projection and attention stack; the [B, N, H] outputs
    are averaged before the shared Linear; the MLP follows the ME-DNN rule.

    The paper and its code give no AutoInt hyper-parameters; the defaults are the AutoInt paper's
    (attention size 32, 2 heads, 3 layers). See docs/design.md.
    """

    def __init__(
        self,
        field_dims,
        embed_dim=10,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        attention_dim=32,
        num_heads=2,
        num_attention_layers=3,
        use_mlp=True,
    ):
        super().__init__(field_dims, embed_dim, num_sets, backend, hidden_dim, dropout)
        self.attention_dim = int(attention_dim)
        self.field_projection = SetLinear(self.num_sets, self.embed_dim, attention_dim)
        self.attention = nn.ModuleList(
            SetSelfAttentionLayer(self.num_sets, attention_dim, num_heads)
            for _ in range(num_attention_layers)
        )
        self.attention_out = nn.Linear(self.num_fields * attention_dim, 1)
        self.use_mlp = use_mlp
        if use_mlp:
            self.mlp_projection = SetProjection(
                self.num_sets, self.num_fields * self.embed_dim, hidden_dim, dropout
            )
            self.mlp_head = OutputHead(hidden_dim, dropout)

    @property
    def set_feature_dim(self) -> int:
        return self.num_fields * self.attention_dim

    def attention_maps(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, M, N, K] -> each set's attention stack output after the ReLU [B, M, N, H]."""
        # SetLinear maps the last axis per set; it expects [..., M, K], so put fields before sets.
        h = self.field_projection(emb.transpose(1, 2)).transpose(1, 2)  # [B, M, N, H]
        for layer in self.attention:
            h = layer(h)
        return torch.relu(h)

    def set_features_from_embeddings(self, emb):
        """[B, M, N, K] -> each set's attention maps flattened [B, M, N*H], what an autoint
        expert of the heterogeneous model projects (the MLP part is the DNN backbone's own)."""
        h = self.attention_maps(emb)
        return h.reshape(*h.shape[:2], self.set_feature_dim)

    def interact_embeddings(self, emb):  # emb [B, M, N, K]
        h = self.attention_maps(emb).mean(dim=1)  # [B, N, H]
        logit = self.attention_out(h.reshape(h.shape[0], h.shape[1] * h.shape[2])).squeeze(-1)
        if self.use_mlp:
            logit = logit + self.mlp_head(
                self.mlp_projection(self.flat_sets(emb), backend=self.backend)
            )
        return logit
