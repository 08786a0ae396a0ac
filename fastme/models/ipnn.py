import torch

from fastme.models import interactions
from fastme.models.base import ProjectedModel


class IPNN(ProjectedModel):
    """IPNN: all N(N-1)/2 pairwise inner products (i < j) -> MLP.

    ``concat_embeddings`` chooses whether the flattened embeddings are concatenated to the inner
    products. Default ``None`` follows the paper's code: yes for SE, no for ME (ME feeds only the
    products to each set's projection). See docs/design.md.

    ``shared_interaction=True`` (ME) is the Figure 10c ablation for IPNN: the inner products
    have no parameters, so the interaction module a set owns is its projection block; here ONE
    projection block serves every set's products.
    """

    def __init__(
        self,
        field_dims,
        embed_dim=10,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        nonlinear_projection=True,
        concat_embeddings=None,
        shared_interaction=False,
    ):
        super().__init__(
            field_dims, embed_dim, num_sets, backend, hidden_dim, dropout, nonlinear_projection
        )
        if concat_embeddings is None:
            concat_embeddings = self.num_sets == 1
        self.concat_embeddings = bool(concat_embeddings)
        n = self.num_fields
        in_dim = n * (n - 1) // 2 + (n * self.embed_dim if self.concat_embeddings else 0)
        self._build_projection(in_dim, self._set_shared_interaction(shared_interaction))

    def set_features_from_embeddings(self, emb):
        products = interactions.inner_products(emb)
        if not self.concat_embeddings:
            return products
        return torch.cat([self.flat_sets(emb), products], dim=-1)
