import torch
from torch import nn

from fastme.models import interactions
from fastme.models.base import MultiEmbeddingModel
from fastme.models.layers import SetBlock


class FinalMLP(MultiEmbeddingModel):
    """FinalMLP (feature-selection gates off, as in the paper's code): two MLP streams on the same
    flattened embeddings, fused by a single-head bilinear head. ME: every set has both complete
    streams; each stream's output is averaged over sets separately before the shared fusion."""

    def __init__(
        self, field_dims, embed_dim=10, num_sets=1, backend="auto", hidden_dim=400, dropout=0.2
    ):
        super().__init__(field_dims, embed_dim, num_sets, backend, hidden_dim, dropout)
        d = self.num_fields * self.embed_dim

        def stream():
            return nn.Sequential(
                SetBlock(self.num_sets, d, hidden_dim, dropout),
                SetBlock(self.num_sets, hidden_dim, hidden_dim, dropout),
            )

        self.stream1, self.stream2 = stream(), stream()
        self.fusion1 = nn.Linear(hidden_dim, 1)
        self.fusion2 = nn.Linear(hidden_dim, 1)
        self.fusion_bilinear = nn.Parameter(torch.zeros(hidden_dim, hidden_dim))

    @property
    def set_feature_dim(self) -> int:
        return 3 * self.hidden_dim

    def streams(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, M, N, K] -> both streams' outputs of each set, [B, M, H] each."""
        flat = self.flat_sets(emb)
        return self.stream1(flat), self.stream2(flat)

    def set_features_from_embeddings(self, emb):
        """[B, M, N, K] -> each set's [o1, o2, o1 * o2] [B, M, 3H]: what a finalmlp expert of the
        heterogeneous model projects. The fusion head ends in one logit; the element-wise
        product keeps its multiplicative term, so that the projection's Linear holds H
        diagonal bilinear fusions (without it the expert would be a plain MLP)."""
        o1, o2 = self.streams(emb)
        return torch.cat([o1, o2, o1 * o2], dim=-1)

    def interact_embeddings(self, emb):  # emb [B, M, N, K]
        o1, o2 = (o.mean(dim=1) for o in self.streams(emb))
        return interactions.bilinear_fusion(
            o1,
            o2,
            self.fusion1.weight[0],
            self.fusion1.bias[0],
            self.fusion2.weight[0],
            self.fusion2.bias[0],
            self.fusion_bilinear,
        )
