from fastme.models.base import ProjectedModel


class DNN(ProjectedModel):
    """DNN: concatenated field embeddings -> MLP. ME: a per-set projection of each set's
    concatenation, mean, then the shared MLP."""

    def __init__(
        self,
        field_dims,
        embed_dim=10,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        nonlinear_projection=True,
    ):
        super().__init__(
            field_dims, embed_dim, num_sets, backend, hidden_dim, dropout, nonlinear_projection
        )
        self._build_projection(self.num_fields * self.embed_dim)

    def set_features_from_embeddings(self, emb):
        return self.flat_sets(emb)
