"""The orthogonality-regularised DCNv2 (Evidence III, Appendices J and K) as a model option."""

import copy

import pytest
import torch

from fastme.models import build

FIELD_DIMS = [5, 7, 3, 11]


def _pair(multi, scale, **options):
    torch.manual_seed(0)
    reg = build(
        "dcnv2",
        FIELD_DIMS,
        scale,
        multi,
        backend="reference",
        hidden_dim=16,
        regularization="orthogonal",
        **options,
    )
    torch.manual_seed(0)
    plain = build("dcnv2", FIELD_DIMS, scale, multi, backend="reference", hidden_dim=16)
    return reg, plain


def test_default_model_is_unchanged():
    reg, plain = _pair(True, 2)
    assert plain.regularization_loss() is None
    assert set(reg.state_dict()) - set(plain.state_dict()) == {"block_scale"}
    for name, value in plain.state_dict().items():  # same initialisation otherwise
        assert torch.equal(value, reg.state_dict()[name]), name
    assert reg.block_scale.shape == (4, 2, 4, 4)  # layer, set, field pair
    with pytest.raises(RuntimeError):
        plain.orthogonality_penalty()


@pytest.mark.parametrize("variant", ["paper", "code"])
@pytest.mark.parametrize("multi,scale", [(False, 1), (True, 3)])
def test_training_reduces_penalty(variant, multi, scale):
    g = torch.Generator().manual_seed(1)
    x = torch.stack([torch.randint(0, d, (128,), generator=g) for d in FIELD_DIMS], 1)
    y = torch.randint(0, 2, (128,), generator=g).float()
    # coefficient 1 (not the default 1e-5) so that a few plain SGD steps show the effect; the
    # same model trained with coefficient 0 is the control
    torch.manual_seed(0)
    model = build(
        "dcnv2",
        FIELD_DIMS,
        scale,
        multi,
        backend="reference",
        hidden_dim=16,
        regularization="orthogonal",
        regularization_variant=variant,
        regularization_coef=1.0,
    )
    control = copy.deepcopy(model)
    control.regularization_coef = 0.0
    start = float(model.orthogonality_penalty().detach())
    for net in (model, control):
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for _ in range(10):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
            reg = net.regularization_loss()
            assert float(reg.detach()) == pytest.approx(
                net.regularization_coef * float(net.orthogonality_penalty().detach())
            )
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
    end = float(model.orthogonality_penalty().detach())
    assert end < 0.8 * start
    assert end < 0.8 * float(control.orthogonality_penalty().detach())


@torch.no_grad()
def test_penalty_values():
    model, _ = _pair(False, 1, regularization_coef=0.5)
    k, n = model.embed_dim, model.num_fields
    model.cross_weight.zero_()
    # every block 2 * I: W^T W = 4 I; the paper variant with lambda = 4 has zero penalty
    model.cross_weight.add_(torch.eye(k).repeat(n, n) * 2)
    model.block_scale.fill_(4.0)
    assert float(model.orthogonality_penalty()) == pytest.approx(0.0)
    assert float(model.regularization_loss()) == pytest.approx(0.0)
    model.block_scale.fill_(1.0)
    # ||4 I - I||_F^2 = 9 K per block
    assert float(model.orthogonality_penalty()) == pytest.approx(4 * n * n * 9 * k)
    code, _ = _pair(False, 1, regularization_variant="code")
    code.cross_weight.zero_()
    code.cross_weight.add_(torch.eye(k).repeat(n, n) * 2)
    # ||I - B B^T||^2 on the unscaled block: the scale does not enter
    assert float(code.orthogonality_penalty()) == pytest.approx(4 * n * n * 9 * k)


def test_code_variant_scales_blocks_in_forward():
    model, plain = _pair(True, 2, regularization_variant="code")
    x = torch.stack([torch.randint(0, d, (16,)) for d in FIELD_DIMS], 1)
    model.eval()
    plain.eval()
    k = model.embed_dim
    with torch.no_grad():
        model.block_scale[0, 1, 2, 0] = 0.0  # layer 0, set 1, block rows of field 2, cols of 0
        plain.cross_weight[0, 1, 2 * k : 3 * k, 0:k] = 0.0
    assert torch.allclose(model(x), plain(x), atol=1e-6)
    w, _ = model.cross_weights()
    assert torch.count_nonzero(w[0, 1, 2 * k : 3 * k, 0:k]) == 0


def test_invalid_options():
    with pytest.raises(ValueError, match="regularization"):
        build("dcnv2", FIELD_DIMS, regularization="l2")
    with pytest.raises(ValueError, match="variant"):
        build("dcnv2", FIELD_DIMS, regularization="orthogonal", regularization_variant="x")
    with pytest.raises(ValueError, match="coef"):
        build("dcnv2", FIELD_DIMS, regularization="orthogonal", regularization_coef=-1)
