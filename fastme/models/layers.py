"""Building blocks shared by every backbone. Per-set ("Set*") layers hold one independent copy of
their weights per embedding set and run all sets in one batched op (no Python loop over sets).

Initialisation follows the paper's reference code: PyTorch's nn.Linear default for linear layers
(uniform in +-1/sqrt(fan_in) for weight and bias), BatchNorm gamma 1 / beta 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastme import ops
from fastme.models import interactions


def folds_into_linear(norm) -> bool:
    """Whether ``norm`` (a block's BatchNorm, which a user may have swapped for another module)
    is an affine map in eval mode: a BatchNorm1d with running statistics."""
    return isinstance(norm, nn.BatchNorm1d) and norm.running_var is not None


def batchnorm_affine(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm (running statistics) as the affine map
    ``y = x * scale + shift``, which folds into the Linear before it."""
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def _uniform_fan_in(tensor: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(tensor, -bound, bound)


class MultiSetEmbedding(nn.Module):
    """All fields' tables of all M sets in one parameter ``weight`` [sum(field_dims), M, K].

    Field i's value v is row ``offsets[i] + v``; that row holds the M sets contiguously, so one
    gather serves every set. Each set is Xavier-uniform initialised over the whole concatenated
    table (bound sqrt(6 / (sum(field_dims) + K))), as the paper's code does for its per-set tables.
    """

    def __init__(self, field_dims, num_sets: int, embed_dim: int):
        super().__init__()
        dims = torch.tensor(field_dims, dtype=torch.long)
        rows = int(dims.sum())
        self.weight = nn.Parameter(torch.empty(rows, num_sets, embed_dim))
        bound = math.sqrt(6.0 / (rows + embed_dim))
        nn.init.uniform_(self.weight, -bound, bound)
        # Not persistent: derived from the constructor arguments, so the state dict holds only
        # learned values and is identical whatever the backend.
        self.register_buffer("offsets", torch.cumsum(dims, 0) - dims, persistent=False)
        self.register_buffer("field_dims", dims, persistent=False)

    @property
    def num_sets(self) -> int:
        return self.weight.shape[1]

    @property
    def embed_dim(self) -> int:
        return self.weight.shape[2]

    def field_tables(self) -> list[torch.Tensor]:
        """Per-field views [M, D_i, K] of the table (detached)."""
        w = self.weight.detach()
        return [
            w[o : o + d].permute(1, 0, 2)
            for o, d in zip(self.offsets.tolist(), self.field_dims.tolist())
        ]


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on a CPU. ``backend`` is the model's (a fastme model sets
    it on each of its Dropout modules): with "auto" or "cpu" and fastme's CPU kernels,
    ``fastme.ops.dropout`` (a hashed counter mask in one C++ pass, recomputed in the backward:
    ~0.1 ms for a [512, 400] activation where torch's draws take ~0.9 ms); otherwise a keep
    mask from ``torch.rand_like``, already scaled by 1/(1-p), one multiply (torch's CPU dropout
    draws Bernoulli samples and scales in separate passes, ~2x slower). Both keep each element
    with probability 1 - p, from other random numbers. On other devices, and outside training,
    it is exactly nn.Dropout (CUDA has a fused kernel)."""

    backend = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        if self.backend in ("auto", "cpu") and "cpu" in ops.available_backends(x.device):
            return ops.dropout(x, self.p, backend="cpu")
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep


def share_backend(module: nn.Module, backend: str) -> None:
    """Set ``backend`` on every :class:`Dropout` inside ``module`` (the model's choice)."""
    for child in module.modules():
        if isinstance(child, Dropout):
            child.backend = backend


class SetLinear(nn.Module):
    """M independent Linear(in_dim, out_dim): [..., M, in_dim] -> [..., M, out_dim]."""

    def __init__(self, num_sets: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_sets, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(num_sets, out_dim))
        _uniform_fan_in(self.weight, in_dim)
        _uniform_fan_in(self.bias, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...mi,moi->...mo", x, self.weight) + self.bias


class SetBlock(nn.Module):
    """Per-set hidden block: Linear -> BatchNorm -> ReLU -> Dropout, [B, M, in] -> [B, M, out].

    BatchNorm normalises each feature separately, so one BatchNorm1d over the M*out features is
    exactly M independent BatchNorms. With ``activation=False`` only the Linear remains (used to
    build the linear-projection variant of Appendix E).
    """

    def __init__(
        self, num_sets: int, in_dim: int, out_dim: int, dropout: float, activation: bool = True
    ):
        super().__init__()
        self.linear = SetLinear(num_sets, in_dim, out_dim)
        self.activation = activation
        if activation:
            self.norm = nn.BatchNorm1d(num_sets * out_dim)
            self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference_ready() and x.dim() == 3:
            return self._inference_forward(x)
        y = self.linear(x)
        if not self.activation:
            return y
        b, m, d = y.shape
        y = self.norm(y.reshape(b, m * d)).reshape(b, m, d)
        return self.dropout(torch.relu(y))

    def inference_ready(self) -> bool:
        """Eval mode with running statistics: the BatchNorm is an affine map that folds into the
        Linear (:meth:`folded`)."""
        return not self.training and folds_into_linear(getattr(self, "norm", None))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [M, out, in], bias [M, out]) of the Linear with the eval BatchNorm folded in."""
        norm, linear = self.norm, self.linear
        sets, out, _ = linear.weight.shape
        scale, shift = batchnorm_affine(norm)
        scale, shift = scale.view(sets, out), shift.view(sets, out)
        return linear.weight * scale.unsqueeze(-1), linear.bias * scale + shift

    def set_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Eval mode: each set's ReLU(BatchNorm(Linear)) [B, out], one ``addmm`` (bias and the
        folded BatchNorm included) and one in-place ReLU per set on x's strided rows (dropout is
        the identity). The einsum + bias + BatchNorm + ReLU passes and their layout copies were
        ~40% of an ME-DCNv2 x4 CPU inference in bf16; a ``baddbmm`` over the sets copies its
        strided input and was slower too."""
        weight, bias = self.folded()
        relu = torch.relu if torch.is_grad_enabled() else torch.relu_  # eval may still need grads
        return [relu(torch.addmm(bias[m], x[:, m], weight[m].t())) for m in range(len(weight))]

    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.set_outputs(x), dim=1)


class HiddenBlock(nn.Sequential):
    """Shared (not per-set) block: Linear -> BatchNorm -> ReLU -> Dropout. In eval mode the
    BatchNorm folds into the Linear (one ``addmm`` and a ReLU), as :class:`SetBlock`'s does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear, norm = self[0], self[1]
        if (
            self.training
            or len(self) != 4
            or not isinstance(linear, nn.Linear)
            or not folds_into_linear(norm)
            or x.dim() != 2
        ):
            return super().forward(x)
        scale, shift = batchnorm_affine(norm)
        weight, bias = linear.weight * scale.unsqueeze(-1), linear.bias * scale + shift
        y = torch.addmm(bias, x, weight.t())
        return torch.relu(y) if torch.is_grad_enabled() else torch.relu_(y)


def hidden_block(in_dim: int, out_dim: int, dropout: float) -> HiddenBlock:
    """Shared (not per-set) block: Linear -> BatchNorm -> ReLU -> Dropout."""
    return HiddenBlock(
        nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(), Dropout(dropout)
    )


class SetProjection(nn.Module):
    """The ME per-set projection followed by the mean over sets: [B, M, in] -> [B, out].

    ``nonlinear=True`` (the paper's design): each set's Linear is followed by its own BatchNorm,
    ReLU and Dropout, then the sets are averaged. ``nonlinear=False`` averages the per-set Linear
    outputs first and applies one shared BatchNorm/ReLU/Dropout after the mean; the model is then
    exactly an SE model of embedding size M*K (Appendix E), which tests use to show the
    non-linearity matters.
    """

    def __init__(
        self, num_sets: int, in_dim: int, out_dim: int, dropout: float, nonlinear: bool = True
    ):
        super().__init__()
        self.block = SetBlock(num_sets, in_dim, out_dim, dropout, activation=nonlinear)
        if nonlinear:
            self.after_mean = nn.Identity()
        else:
            self.after_mean = nn.Sequential(nn.BatchNorm1d(out_dim), nn.ReLU(), Dropout(dropout))

    def forward(self, x: torch.Tensor, backend: str = "reference") -> torch.Tensor:
        """``backend``: the model's; in eval mode it selects how the folded projection runs
        (``fastme.ops.set_projection_mean``: on the CPU backend without gradients one fused pass
        after bias-free GEMMs; with gradients the reference composition), never the parameters
        or the training path."""
        if self.block.inference_ready() and x.dim() == 3:
            weight, bias = self.block.folded()
            return ops.set_projection_mean(x, weight, bias, backend=backend)
        return self.after_mean(self.block(x).mean(dim=1))


class OutputHead(nn.Module):
    """The shared MLP after the mean: Block(hidden -> hidden) -> Linear(hidden -> 1) -> [B]."""

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__()
        self.block = hidden_block(hidden_dim, hidden_dim, dropout)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(h)).squeeze(-1)


class SetCIN(nn.Module):
    """xDeepFM's Compressed Interaction Network, one per set: [B, M, N, K] -> [B, M, sum(C_l)]."""

    def __init__(self, num_sets: int, num_fields: int, layer_sizes=(16, 16)):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        prev = num_fields
        for size in layer_sizes:
            fan_in = num_fields * prev
            w = nn.Parameter(torch.empty(num_sets, size, fan_in))
            b = nn.Parameter(torch.empty(num_sets, size))
            _uniform_fan_in(w, fan_in)
            _uniform_fan_in(b, fan_in)
            self.weights.append(w)
            self.biases.append(b)
            prev = size
        self.output_dim = sum(layer_sizes)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return interactions.cin(emb, list(self.weights), list(self.biases))


class SetSelfAttentionLayer(nn.Module):
    """One AutoInt interacting layer per set: x + MHA(x), then LayerNorm. [B, M, N, H]."""

    def __init__(self, num_sets: int, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        # Same initialisation as torch.nn.MultiheadAttention.
        self.in_weight = nn.Parameter(torch.empty(num_sets, 3 * dim, dim))
        self.in_bias = nn.Parameter(torch.zeros(num_sets, 3 * dim))
        self.out_weight = nn.Parameter(torch.empty(num_sets, dim, dim))
        self.out_bias = nn.Parameter(torch.zeros(num_sets, dim))
        bound = math.sqrt(6.0 / (4 * dim))
        nn.init.uniform_(self.in_weight, -bound, bound)
        _uniform_fan_in(self.out_weight, dim)
        self.norm_weight = nn.Parameter(torch.ones(num_sets, dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_sets, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + interactions.set_self_attention(
            x, self.in_weight, self.in_bias, self.out_weight, self.out_bias, self.num_heads
        )
        y = nn.functional.layer_norm(y, y.shape[-1:])
        return y * self.norm_weight.unsqueeze(1) + self.norm_bias.unsqueeze(1)
