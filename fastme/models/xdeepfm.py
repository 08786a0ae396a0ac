from torch import nn

from fastme.models.base import MultiEmbeddingModel
from fastme.models.layers import OutputHead, SetCIN, SetProjection


class xDeepFM(MultiEmbeddingModel):  # noqa: N801 - the model's published name
    """xDeepFM: CIN logit + DNN logit. ME: one CIN per set, the pooled CIN features averaged over
    sets before one shared Linear; the DNN part follows the ME-DNN rule (per-set first block)."""

    def __init__(
        self,
        field_dims,
        embed_dim=10,
        num_sets=1,
        backend="auto",
        hidden_dim=400,
        dropout=0.2,
        cin_layer_sizes=(16, 16),
    ):
        super().__init__(field_dims, embed_dim, num_sets, backend, hidden_dim, dropout)
        self.cin = SetCIN(self.num_sets, self.num_fields, tuple(cin_layer_sizes))
        self.cin_out = nn.Linear(self.cin.output_dim, 1)
        self.dnn_projection = SetProjection(
            self.num_sets, self.num_fields * self.embed_dim, hidden_dim, dropout
        )
        self.dnn_head = OutputHead(hidden_dim, dropout)

    @property
    def set_feature_dim(self) -> int:
        return self.cin.output_dim

    def set_features_from_embeddings(self, emb):
        """[B, M, N, K] -> the CIN's pooled maps of each set [B, M, sum(C_l)]: what the CIN's
        logit layer reads (after the mean over sets), and what an xdeepfm expert of the
        heterogeneous model projects. The DNN part is the DNN backbone's own."""
        return self.cin(emb)

    def interact_embeddings(self, emb):  # emb [B, M, N, K]
        cin_logit = self.cin_out(self.set_features_from_embeddings(emb).mean(dim=1)).squeeze(-1)
        dnn_logit = self.dnn_head(self.dnn_projection(self.flat_sets(emb), backend=self.backend))
        return cin_logit + dnn_logit
