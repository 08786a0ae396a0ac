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

    def interact_embeddings(self, emb):  # emb [B, M, N, K]
        cin_logit = self.cin_out(self.cin(emb).mean(dim=1)).squeeze(-1)
        dnn_logit = self.dnn_head(self.dnn_projection(self.flat_sets(emb)))
        return cin_logit + dnn_logit
