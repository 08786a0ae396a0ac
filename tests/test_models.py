"""SE/ME models: shapes, gradients, parameter scaling, Appendix E, input errors."""

import pytest
import torch

import fastme.models as fm

FIELD_DIMS = [3, 7, 20, 5, 1]


def random_x(field_dims, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, d, (batch,), generator=g) for d in field_dims], 1)


def small(name, multi, scale=2, **options):
    torch.manual_seed(0)
    options.setdefault("hidden_dim", 16)
    if name == "nfwfm":  # base 50 is large for a unit test; the class takes any embed_dim
        cls = fm.MODELS[name]
        k, m = (4, scale) if multi else (4 * scale, 1)
        return cls(FIELD_DIMS, embed_dim=k, num_sets=m, **options)
    return fm.build(name, FIELD_DIMS, scale, multi, **options)


@pytest.mark.parametrize("name", sorted(fm.MODELS))
@pytest.mark.parametrize("multi", [False, True])
def test_forward_shape_and_gradients_reach_every_parameter(name, multi):
    model = small(name, multi)
    x = random_x(FIELD_DIMS, 8)
    logits = model(x)
    assert logits.shape == (8,)
    assert torch.isfinite(logits).all()
    # FinalMLP's bilinear matrix starts at zero, so its inputs' gradients vanish on the first
    # step except through the linear terms; a random perturbation makes every path live.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    (model(x) * torch.randn(8)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name", sorted(fm.MODELS))
def test_eval_mode_is_deterministic_and_handles_empty_batch(name):
    model = small(name, True).eval()
    x = random_x(FIELD_DIMS, 4)
    torch.testing.assert_close(model(x), model(x))
    assert model(x[:0]).shape == (0,)


@pytest.mark.parametrize("name", sorted(fm.MODELS))
@pytest.mark.parametrize("scale", [1, 3])
def test_se_and_me_have_equal_embedding_parameters(name, scale):
    se = fm.build(name, FIELD_DIMS, scale, multi=False, hidden_dim=8)
    me = fm.build(name, FIELD_DIMS, scale, multi=True, hidden_dim=8)
    base = fm.MODELS[name].base_embed_dim
    expected = sum(FIELD_DIMS) * base * scale
    assert se.embedding.weight.numel() == me.embedding.weight.numel() == expected
    assert (se.embed_dim, se.num_sets) == (base * scale, 1)
    assert (me.embed_dim, me.num_sets) == (base, scale)


def test_dcnv2_cross_parameters_grow_quadratically_for_se_and_linearly_for_me():
    n, k, layers = len(FIELD_DIMS), 10, 4
    for scale in (1, 2, 4):
        se = fm.build("dcnv2", FIELD_DIMS, scale, multi=False)
        me = fm.build("dcnv2", FIELD_DIMS, scale, multi=True)
        d_se, d_me = n * k * scale, n * k
        assert se.cross_weight.numel() + se.cross_bias.numel() == layers * (d_se**2 + d_se)
        assert me.cross_weight.numel() + me.cross_bias.numel() == scale * layers * (d_me**2 + d_me)


def test_dcnv2_shared_interaction_runs_every_set_through_one_cross_network_and_projection():
    """Figure 10c's variant: M tables, one cross network and one projection block for all sets;
    in eval mode the output is the head of the mean over sets of that one path per set."""
    torch.manual_seed(0)
    model = fm.build(
        "dcnv2", FIELD_DIMS, 3, multi=True, shared_interaction=True, hidden_dim=16
    ).double()
    separate = fm.build("dcnv2", FIELD_DIMS, 3, multi=True, hidden_dim=16)
    assert model.cross_weight.shape[1] == 1 and model.projection.block.linear.weight.shape[0] == 1
    shared = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embedding"))
    own = sum(p.numel() for n, p in separate.named_parameters() if not n.startswith("embedding"))
    assert shared < own
    with torch.no_grad():  # random BatchNorm statistics and biases make every term visible
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
        model.cross_bias.normal_()
    model.eval()
    x = random_x(FIELD_DIMS, 9)
    emb = model.lookup(x)
    w, b = model.cross_weight[:, 0], model.cross_bias[:, 0]
    per_set = []
    for m in range(model.num_sets):
        x0 = xl = emb[:, m].reshape(9, -1)
        for layer in range(w.shape[0]):
            xl = x0 * (xl @ w[layer].T + b[layer]) + xl
        per_set.append(model.projection(xl[:, None]))
    expected = model.head(torch.stack(per_set, 1).mean(1))
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(TypeError, match="shared_interaction"):
        fm.build("dcnv2", FIELD_DIMS, 2, multi=True, shared_interaction="yes")


def test_ipnn_shared_interaction_runs_every_set_through_one_projection():
    """IPNN's Figure 10c variant: the inner products have no parameters, so the sets share the
    one projection block; in eval mode the head of the mean over sets of that block applied to
    each set's products."""
    torch.manual_seed(0)
    model = fm.build(
        "ipnn", FIELD_DIMS, 3, multi=True, shared_interaction=True, hidden_dim=16
    ).double()
    assert model.projection.block.linear.weight.shape[0] == 1
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    model.eval()
    x = random_x(FIELD_DIMS, 9)
    emb = model.lookup(x)
    n = len(FIELD_DIMS)
    rows, cols = torch.triu_indices(n, n, offset=1)
    per_set = []
    for m in range(model.num_sets):
        e = emb[:, m]  # [B, N, K]
        products = (e[:, rows] * e[:, cols]).sum(-1)
        per_set.append(model.projection(products[:, None]))
    expected = model.head(torch.stack(per_set, 1).mean(1))
    torch.testing.assert_close(model(x), expected)
    separate = fm.build("ipnn", FIELD_DIMS, 3, multi=True, hidden_dim=16)
    assert separate.projection.block.linear.weight.shape[0] == 3
    with pytest.raises(TypeError, match="shared_interaction"):
        fm.build("ipnn", FIELD_DIMS, 2, multi=True, shared_interaction=1)


def test_criteo_sanity_parameter_counts_match_reference_code():
    """reference-facts §10: SE DCNv2 base on Criteo has a 609,960-parameter cross network and a
    318,801-parameter MLP (projection 156,400 + 160,400 + 401 + 2 x 800 BatchNorm)."""
    n = 39
    dims = [4] * n  # only the table depends on cardinalities
    model = fm.DCNv2(dims)
    assert model.cross_weight.numel() + model.cross_bias.numel() == 609_960
    mlp = sum(
        p.numel() for name, p in model.named_parameters() if name.startswith(("projection", "head"))
    )
    assert mlp == 318_801


def test_ipnn_input_follows_reference_code_and_can_be_overridden():
    n = len(FIELD_DIMS)
    pairs = n * (n - 1) // 2
    se = fm.build("ipnn", FIELD_DIMS, 2, multi=False)
    me = fm.build("ipnn", FIELD_DIMS, 2, multi=True)
    assert se.projection.block.linear.weight.shape[-1] == pairs + n * 20  # SE scales K (paper)
    assert me.projection.block.linear.weight.shape[-1] == pairs
    both = fm.build("ipnn", FIELD_DIMS, 2, multi=True, concat_embeddings=True)
    assert both.projection.block.linear.weight.shape[-1] == pairs + n * 10


def test_nfwfm_upper_pairs_ignore_lower_triangle_and_diagonal():
    model = fm.NFwFM(FIELD_DIMS, embed_dim=4, num_sets=2, hidden_dim=8, field_pairs="upper").eval()
    x = random_x(FIELD_DIMS, 6)
    before = model(x)
    with torch.no_grad():
        model.field_weights.add_(torch.randn_like(model.field_weights).tril())
    torch.testing.assert_close(model(x), before)


def test_embedding_tables_and_cross_weights_views():
    model = fm.build("dcnv2", FIELD_DIMS, 3, multi=True)
    tables = model.embedding_tables()
    assert [tuple(t.shape) for t in tables] == [(3, d, 10) for d in FIELD_DIMS]
    offset = sum(FIELD_DIMS[:2])
    torch.testing.assert_close(
        tables[2][1], model.embedding.weight[offset : offset + 20, 1].detach()
    )
    weight, bias = model.cross_weights()
    d = len(FIELD_DIMS) * 10
    assert weight.shape == (4, 3, d, d) and bias.shape == (4, 3, d)


def test_se_dnn_is_the_plain_torch_dnn():
    """With one set, the per-set layers reduce to the paper's SE DNN written with plain torch.nn:
    flatten -> Linear/BN/ReLU/Dropout -> Linear/BN/ReLU/Dropout -> Linear."""
    torch.manual_seed(3)
    model = fm.DNN(FIELD_DIMS, embed_dim=4, hidden_dim=8)
    model.train()
    for seed in range(2):  # non-trivial BatchNorm statistics
        model(random_x(FIELD_DIMS, 16, seed))
    model.eval()
    n, k = len(FIELD_DIMS), 4
    plain = torch.nn.Sequential(
        torch.nn.Linear(n * k, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 1),
    ).eval()
    proj, head = model.projection.block, model.head
    with torch.no_grad():
        plain[0].weight.copy_(proj.linear.weight[0])
        plain[0].bias.copy_(proj.linear.bias[0])
        plain[1].load_state_dict(proj.norm.state_dict())
        plain[3].load_state_dict(head.block[0].state_dict())
        plain[4].load_state_dict(head.block[1].state_dict())
        plain[6].load_state_dict(head.out.state_dict())
    x = random_x(FIELD_DIMS, 6)
    rows = x + model.embedding.offsets
    flat = model.embedding.weight[rows, 0].reshape(6, n * k)  # field-major concatenation
    torch.testing.assert_close(model(x), plain(flat).squeeze(-1))


def _se_copy_of_linear_me_dnn(me):
    """An SE DNN with embedding size M*K whose weights reproduce the given ME DNN (Appendix E)."""
    m, k, n = me.num_sets, me.embed_dim, me.num_fields
    se = fm.DNN(
        me.field_dims,
        embed_dim=m * k,
        num_sets=1,
        hidden_dim=me.hidden_dim,
        nonlinear_projection=me.nonlinear_projection,
    )
    state = {key: v.clone() for key, v in me.state_dict().items()}
    state["embedding.weight"] = me.embedding.weight.detach().reshape(-1, 1, m * k)
    # ME input of set s is field-major [e_0^s, e_1^s, ...]; the SE input is [e_0^0..e_0^{M-1}, ...].
    w = me.projection.block.linear.weight.detach()  # [M, H, N*K]
    w = w.reshape(m, -1, n, k).permute(1, 2, 0, 3).reshape(1, -1, n * m * k) / m
    state["projection.block.linear.weight"] = w
    state["projection.block.linear.bias"] = me.projection.block.linear.bias.detach().mean(
        0, keepdim=True
    )
    if me.nonlinear_projection:  # per-set BatchNorm: only copyable for M=1, keep SE's own
        for key in list(state):
            if key.startswith("projection.block.norm"):
                state[key] = se.state_dict()[key]
    se.load_state_dict(state)
    return se.eval()


def test_me_without_nonlinearity_is_exactly_se_with_concatenated_sets():
    """Appendix E: with a linear per-set projection, ME is an SE model of size M*K."""
    torch.manual_seed(0)
    me = fm.DNN(FIELD_DIMS, embed_dim=4, num_sets=3, hidden_dim=16, nonlinear_projection=False)
    # Non-trivial BatchNorm statistics so the check is not vacuous.
    me.train()
    for seed in range(3):
        me(random_x(FIELD_DIMS, 32, seed))
    me.eval()
    se = _se_copy_of_linear_me_dnn(me)
    x = random_x(FIELD_DIMS, 16, seed=7)
    torch.testing.assert_close(se(x), me(x))


def test_me_with_nonlinear_projection_is_not_that_se_model():
    """With the paper's non-linear projection the same construction no longer reproduces ME."""
    torch.manual_seed(0)
    me = fm.DNN(FIELD_DIMS, embed_dim=4, num_sets=3, hidden_dim=16).eval()
    se = _se_copy_of_linear_me_dnn(me)
    x = random_x(FIELD_DIMS, 16, seed=7)
    assert (se(x) - me(x)).abs().max() > 1e-3


def test_backend_switch_keeps_state_dict_and_results():
    model = fm.build("nfwfm", FIELD_DIMS, 1, multi=True, hidden_dim=8).eval()
    x = random_x(FIELD_DIMS, 5)
    keys, out = list(model.state_dict()), model(x)
    model.backend = "reference"
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), out)
    with pytest.raises(ValueError, match="backend"):
        model.backend = "tpu"


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.tensor([[0, 0, 0, 0, 1]]), IndexError, "out of range for field 4"),
        (torch.tensor([[0, 0, -1, 0, 0]]), IndexError, "out of range"),
        (torch.zeros(2, 4, dtype=torch.long), ValueError, r"shape \[B, 5\]"),
        (torch.zeros(2, 5), TypeError, "int32/int64"),
        (torch.zeros(5, dtype=torch.long), ValueError, "shape"),
    ],
)
def test_bad_input_raises_clear_error(bad, exc, match):
    model = fm.build("dnn", FIELD_DIMS, 1, multi=False)
    with pytest.raises(exc, match=match):
        model(bad)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        fm.build("wide", FIELD_DIMS, 1)
    with pytest.raises(ValueError, match="scale"):
        fm.build("dnn", FIELD_DIMS, 0)
    with pytest.raises(ValueError, match="field_dims"):
        fm.DNN([3, 0])


@pytest.mark.parametrize("name", sorted(fm.MODELS))
def test_forward_embeddings_equals_forward_on_the_gathered_embeddings(name):
    # The path a sharded embedding takes; the fused backbones (DCNv2, NFwFM) switch from their
    # lookup-fused op to the op on gathered embeddings, so this also checks them against each other.
    model = small(name, True).double().eval()
    x = random_x(FIELD_DIMS, 6, seed=3)
    emb = model.lookup(x).detach().requires_grad_()
    torch.testing.assert_close(model.forward_embeddings(emb), model(x))
    (model.forward_embeddings(emb) * torch.randn(6, dtype=torch.float64)).sum().backward()
    assert emb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, M, N, K\]"):
        model.forward_embeddings(emb[:, :, :-1])


def test_cpu_dropout_keeps_one_minus_p_scaled_and_its_gradient_is_the_mask():
    from fastme.models.layers import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.rand(400, 500, dtype=torch.float64).add_(0.5).requires_grad_()
    y = drop(x)
    kept = y != 0
    # 200k draws: the kept fraction's standard deviation is about 0.001
    assert abs(kept.double().mean().item() - 0.7) < 0.006
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.double() / 0.7)
    drop.eval()
    assert torch.equal(drop(x), x)


@pytest.mark.parametrize("grad", [False, True])
def test_eval_set_projection_folds_batchnorm_into_the_linear_exactly(grad):
    """In eval mode SetProjection/SetBlock fold the BatchNorm (running statistics, affine and
    not) into the per-set Linear and sum the sets as they come; the same function as the
    training-mode composition Linear -> BatchNorm(eval) -> ReLU -> mean, in float64."""
    from fastme.models.layers import SetBlock, SetProjection

    torch.manual_seed(0)
    proj = SetProjection(3, 7, 5, dropout=0.3).double()
    norm = proj.block.norm
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(11, 3, 7, dtype=torch.float64, requires_grad=grad)
    proj.eval()
    with torch.set_grad_enabled(grad):
        got = proj(x)
        block = proj.block
        y = torch.einsum("bmi,moi->bmo", x, block.linear.weight) + block.linear.bias
        expect = torch.relu(block.norm(y.reshape(11, 15)).reshape(11, 3, 5))
        torch.testing.assert_close(block(x), expect, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, expect.mean(1), rtol=1e-12, atol=1e-12)
    if grad:  # eval-mode gradients (analysis) flow through the folded path
        (gx,) = torch.autograd.grad(got.sum(), x)
        (ex,) = torch.autograd.grad(expect.mean(1).sum(), x)
        torch.testing.assert_close(gx, ex)
    plain = SetBlock(3, 7, 5, dropout=0.0, activation=True).double().eval()
    plain.norm = torch.nn.BatchNorm1d(15, affine=False).double().eval()
    y = torch.einsum("bmi,moi->bmo", x.detach(), plain.linear.weight) + plain.linear.bias
    expect = torch.relu(plain.norm(y.reshape(11, 15)).reshape(11, 3, 5))
    torch.testing.assert_close(plain(x.detach()), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", [False, True])
def test_eval_hidden_block_folds_batchnorm_into_the_linear_exactly(grad):
    """The head's shared block (Linear -> BatchNorm -> ReLU -> Dropout) folds its eval
    BatchNorm the same way, in float64; one whose BatchNorm was swapped out runs unfolded."""
    from fastme.models.layers import hidden_block

    torch.manual_seed(0)
    block = hidden_block(7, 5, dropout=0.3).double()
    linear, norm = block[0], block[1]
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(11, 7, dtype=torch.float64, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        expect = torch.relu(norm(linear(x)))
        torch.testing.assert_close(block(x), expect, rtol=1e-12, atol=1e-12)
    block[1] = torch.nn.Identity()
    torch.testing.assert_close(block(x.detach()), torch.relu(linear(x.detach())))


def test_eval_set_block_with_its_batchnorm_swapped_out_runs_unfolded():
    """A user may replace a block's BatchNorm (e.g. by nn.Identity to train without it); eval
    mode then runs the plain composition instead of folding statistics it does not have."""
    from fastme.models.layers import SetProjection

    torch.manual_seed(0)
    proj = SetProjection(3, 7, 5, dropout=0.0).double()
    proj.block.norm = torch.nn.Identity()
    proj.eval()
    x = torch.randn(11, 3, 7, dtype=torch.float64)
    y = torch.einsum("bmi,moi->bmo", x, proj.block.linear.weight) + proj.block.linear.bias
    torch.testing.assert_close(proj(x), torch.relu(y).mean(1), rtol=1e-12, atol=1e-12)
