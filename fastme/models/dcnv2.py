import math

import torch
from torch import nn

from fastme import ops
from fastme.models.base import ProjectedModel


class DCNv2(ProjectedModel):
    """DCNv2, full rank and stacked: L cross layers on the flattened embeddings -> MLP.

    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l with W_l of size NK x NK (Xavier-uniform) and b_l = 0
    at init. ME: each set has its own cross network and its own projection block after it.
    """

    def __init__(self, field_dims, embed_dim=10, num_sets=1, backend="auto", hidden_dim=400,
                 dropout=0.2, nonlinear_projection=True, num_cross_layers=4):
        super().__init__(field_dims, embed_dim, num_sets, backend, hidden_dim, dropout,
                         nonlinear_projection)
        if num_cross_layers < 1:
            raise ValueError(f"num_cross_layers must be >= 1, got {num_cross_layers}")
        d = self.num_fields * self.embed_dim
        self.cross_weight = nn.Parameter(torch.empty(num_cross_layers, self.num_sets, d, d))
        self.cross_bias = nn.Parameter(torch.zeros(num_cross_layers, self.num_sets, d))
        bound = math.sqrt(6.0 / (2 * d))
        nn.init.uniform_(self.cross_weight, -bound, bound)
        self._build_projection(d)

    def cross_weights(self):
        """(W [L, M, NK, NK], b [L, M, NK]), detached. Block W[l, m, i*K:(i+1)*K, j*K:(j+1)*K] is
        the paper's W_{j->i} of layer l, set m."""
        return self.cross_weight.detach(), self.cross_bias.detach()

    def set_features(self, x):
        e = self.embedding
        return ops.lookup_cross_network(e.weight, x, e.offsets, self.cross_weight, self.cross_bias,
                                        field_dims=e.field_dims, backend=self.backend)
