import math

import torch
from torch import nn

from fastme import ops
from fastme.models.base import ProjectedModel


class DCNv2(ProjectedModel):
    """DCNv2, full rank and stacked: L cross layers on the flattened embeddings -> MLP.

    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l with W_l of size NK x NK (Xavier-uniform) and b_l = 0
    at init. ME: each set has its own cross network and its own projection block after it.

    ``regularization="orthogonal"`` gives the regularised DCNv2 of Evidence III / Appendix K: a
    penalty (times ``regularization_coef``, added by :meth:`regularization_loss`) pushes every
    K x K block W_{i->j} of every layer and set toward a scaled orthogonal matrix, with one
    learnable scale per layer, set and field pair (initialised to 1).
    ``regularization_variant="paper"``: sum ||W^T W - lambda_ij I||_F^2, lambda learnable, forward
    unchanged. ``"code"`` (the authors' released code): the forward uses s_ij * W_{i->j} with s
    learnable and the penalty is sum ||I - W W^T||_F^2 on the unscaled blocks (lambda ~ s^2).

    ``shared_interaction=True`` (ME only) is the paper's ablation of Figure 10c/d (the authors'
    ``me-si-dcn``): the M sets keep their own embeddings, but ONE cross network and ONE projection
    block serve them all, so the sets are no longer separated by their interaction. The shared
    projection's BatchNorm sees the B*M set rows of a batch together.
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
        num_cross_layers=4,
        regularization=None,
        regularization_coef=1e-5,
        regularization_variant="paper",
        shared_interaction=False,
    ):
        super().__init__(
            field_dims, embed_dim, num_sets, backend, hidden_dim, dropout, nonlinear_projection
        )
        if num_cross_layers < 1:
            raise ValueError(f"num_cross_layers must be >= 1, got {num_cross_layers}")
        # the sets that own a cross network and a projection: all M, or the one shared by all
        modules = self._set_shared_interaction(shared_interaction)
        d = self.num_fields * self.embed_dim
        self.cross_weight = nn.Parameter(torch.empty(num_cross_layers, modules, d, d))
        self.cross_bias = nn.Parameter(torch.zeros(num_cross_layers, modules, d))
        bound = math.sqrt(6.0 / (2 * d))
        nn.init.uniform_(self.cross_weight, -bound, bound)
        self._build_projection(d, modules)
        if regularization not in (None, "orthogonal"):
            raise ValueError(f"regularization must be None or 'orthogonal', got {regularization!r}")
        if regularization_variant not in ("paper", "code"):
            raise ValueError(
                f"regularization_variant must be 'paper' or 'code', got {regularization_variant!r}"
            )
        if not regularization_coef >= 0:
            raise ValueError(f"regularization_coef must be >= 0, got {regularization_coef!r}")
        self.regularization = regularization
        self.regularization_coef = float(regularization_coef)
        self.regularization_variant = regularization_variant
        # Without regularisation no parameter is added: the plain model's state dict is unchanged.
        if regularization:
            # lambda_ij ("paper") or s_ij ("code") of each layer, set and block
            n = self.num_fields
            self.block_scale = nn.Parameter(torch.ones(num_cross_layers, modules, n, n))

    def _blocks(self, weight):
        """[L, M, NK, NK] -> [L, M, N, N, K, K]; block [a, b] is rows of field a, columns of b."""
        n, k = self.num_fields, self.embed_dim
        return weight.reshape(*weight.shape[:2], n, k, n, k).transpose(3, 4)

    def _effective_weight(self):
        if self.regularization and self.regularization_variant == "code":
            k = self.embed_dim
            scale = self.block_scale.repeat_interleave(k, -1).repeat_interleave(k, -2)
            return self.cross_weight * scale
        return self.cross_weight

    def orthogonality_penalty(self) -> torch.Tensor:
        """The unweighted penalty summed over layers, sets and all N^2 blocks (see class doc)."""
        if not self.regularization:
            raise RuntimeError("orthogonality_penalty needs regularization='orthogonal'")
        b = self._blocks(self.cross_weight)
        eye = torch.eye(self.embed_dim, dtype=b.dtype, device=b.device)
        if self.regularization_variant == "paper":
            lam = self.block_scale[..., None, None]
            return ((b.transpose(-1, -2) @ b - lam * eye) ** 2).sum()
        return ((eye - b @ b.transpose(-1, -2)) ** 2).sum()

    def regularization_loss(self):
        if not self.regularization:
            return None
        return self.regularization_coef * self.orthogonality_penalty()

    def cross_weights(self):
        """(W [L, M, NK, NK], b [L, M, NK]), detached: the weights the forward pass uses (with the
        "code" regularisation variant, the blocks times their scales). Block
        W[l, m, i*K:(i+1)*K, j*K:(j+1)*K] is the paper's W_{j->i} of layer l, set m."""
        return self._effective_weight().detach(), self.cross_bias.detach()

    def set_features_from_embeddings(self, emb):
        flat = self.flat_sets(emb)
        if self.shared_interaction:  # every set through the one cross network: sets become rows
            flat = flat.reshape(-1, 1, flat.shape[-1])
        out = ops.cross_network(
            flat, self._effective_weight(), self.cross_bias, backend=self.backend
        )
        return out.reshape(emb.shape[0], self.num_sets, out.shape[-1])

    def set_features(self, x):  # the lookup fused in front of the cross network
        e = self.embedding
        return ops.lookup_cross_network(
            e.weight,
            x,
            e.offsets,
            self._effective_weight(),
            self.cross_bias,
            field_dims=e.field_dims,
            backend=self.backend,
        )
