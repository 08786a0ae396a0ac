"""The heterogeneous multi-embedding model: equal to a plain per-expert implementation on every
backend, gradients, SE/ME parameter budget, argument errors, torch.compile and export in a fresh
process, and train -> predict -> analyze through the command line."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastme.models as fm
from fastme import ops
from fastme.analysis import group_information_abundance, grouped_diversity
from fastme.cli import main

from kernel_backends import BACKENDS, DEVICE

FIELD_DIMS = [3, 5, 2, 4]
KINDS = ("dcnv2", "nfwfm", "ipnn", "dnn")
#: The kinds without a projection of their own (the model gives them one).
OTHER_KINDS = ("xdeepfm", "autoint", "finalmlp")
ALL_KINDS = KINDS + OTHER_KINDS
#: Small experts, for whichever kinds a test uses.
SMALL_EXPERTS = {
    "dcnv2": {"num_cross_layers": 2},
    "xdeepfm": {"cin_layer_sizes": (3, 2)},
    "autoint": {"attention_dim": 4, "num_heads": 2, "num_attention_layers": 2},
}


def small(scale=6, multi=True, **options):
    torch.manual_seed(0)
    experts = options.get("experts", KINDS)
    options = {
        "experts": KINDS,
        "hidden_dim": 8,
        "expert_options": {k: v for k, v in SMALL_EXPERTS.items() if k in experts},
        **options,
    }
    return fm.build("hetero", FIELD_DIMS, scale, multi, **options)


def random_x(batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, d, (batch,), generator=g) for d in FIELD_DIMS], 1)


def randomize(model):
    """Non-trivial gate, biases, norms and BatchNorm statistics, so that eval mode tests every
    term."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised biases and unit norm weights too
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        if model.gate_layer is not None:
            model.gate_layer.weight.copy_(torch.randn(model.gate_layer.weight.shape, generator=g))


# -- a plain implementation, one expert and one set at a time -----------------------------------
def bn_eval(x, bn):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def plain_features(kind, expert, e):
    """e [B, N, K] (one set s of the expert's group) -> that set's interaction features."""
    b, n, k = e.shape
    flat = e.reshape(b, n * k)
    if kind == "dnn":
        return flat
    if kind == "ipnn":
        products = torch.stack(
            [(e[:, i] * e[:, j]).sum(-1) for i in range(n) for j in range(i + 1, n)], 1
        )
        return torch.cat([flat, products], 1) if expert.concat_embeddings else products
    raise AssertionError(kind)


def set_block_eval(x, block, s):
    """Set s's slice of a per-set hidden block (Linear, BatchNorm, ReLU) in eval mode."""
    y = x @ block.linear.weight[s].T + block.linear.bias[s]
    d, bn = y.shape[1], block.norm
    cut = slice(s * d, (s + 1) * d)
    y = (y - bn.running_mean[cut]) / torch.sqrt(bn.running_var[cut] + bn.eps)
    return torch.relu(y * bn.weight[cut] + bn.bias[cut])


def plain_cin(expert, s, e):
    """Set s's CIN: H_l[c] = ReLU(sum_ij W[c, i, j] e_i * H_{l-1, j} + b[c]), each map summed."""
    b, n, k = e.shape
    h, pooled = e, []
    for w, bias in zip(expert.cin.weights, expert.cin.biases):
        z = torch.stack([e[:, i] * h[:, j] for i in range(n) for j in range(h.shape[1])], 1)
        h = torch.relu(w[s] @ z + bias[s][:, None])  # [C, N*C'] @ [B, N*C', K] -> [B, C, K]
        pooled.append(h.sum(-1))
    return torch.cat(pooled, 1)


def plain_attention(expert, s, e):
    """Set s's AutoInt stack, one head at a time -> ReLU(maps) flattened [B, N*A]."""
    proj = expert.field_projection
    h = e @ proj.weight[s].T + proj.bias[s]  # [B, N, A]
    for layer in expert.attention:
        a = h.shape[-1]
        qkv = h @ layer.in_weight[s].T + layer.in_bias[s]
        q, k, v = qkv[..., :a], qkv[..., a : 2 * a], qkv[..., 2 * a :]
        dh = a // layer.num_heads
        heads = []
        for i in range(layer.num_heads):
            cut = slice(i * dh, (i + 1) * dh)
            scores = q[..., cut] @ k[..., cut].transpose(1, 2) / dh**0.5
            heads.append(torch.softmax(scores, -1) @ v[..., cut])
        y = h + torch.cat(heads, -1) @ layer.out_weight[s].T + layer.out_bias[s]
        mu, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
        h = (y - mu) / torch.sqrt(var + 1e-5) * layer.norm_weight[s] + layer.norm_bias[s]
    return torch.relu(h).reshape(h.shape[0], -1)


def plain_streams(expert, s, e):
    """Set s's two FinalMLP streams -> [o1, o2, o1 * o2]."""
    outs = []
    for stream in (expert.stream1, expert.stream2):
        o = e.reshape(e.shape[0], -1)
        for block in stream:
            o = set_block_eval(o, block, s)
        outs.append(o)
    return torch.cat([outs[0], outs[1], outs[0] * outs[1]], 1)


def plain_expert(kind, expert, sets):
    """sets: the group's [B, N, K] embeddings -> the expert's projected output [B, H]."""
    feats = []
    for s, e in enumerate(sets):
        if kind == "xdeepfm":
            feats.append(plain_cin(expert, s, e))
        elif kind == "autoint":
            feats.append(plain_attention(expert, s, e))
        elif kind == "finalmlp":
            feats.append(plain_streams(expert, s, e))
        elif kind == "dcnv2":
            x0 = e.reshape(e.shape[0], -1)
            x = x0
            for layer in range(expert.cross_weight.shape[0]):
                w, bias = expert.cross_weight[layer, s], expert.cross_bias[layer, s]
                x = x0 * (x @ w.T + bias) + x
            feats.append(x)
        elif kind == "nfwfm":
            r = expert.field_weights[s]
            n = e.shape[1]
            feats.append(sum(r[i, j] * e[:, i] * e[:, j] for i in range(n) for j in range(n)))
        else:
            feats.append(plain_features(kind, expert, e))
    if kind == "nfwfm":  # BatchNorm over all the group's pooled values, then (eval) no dropout
        pooled = bn_eval(torch.cat(feats, 1), expert.pool_norm)
        feats = list(pooled.split(expert.embed_dim, 1))
    block = expert.projection.block
    hidden = [f @ block.linear.weight[s].T + block.linear.bias[s] for s, f in enumerate(feats)]
    hidden = torch.relu(bn_eval(torch.cat(hidden, 1), block.norm))
    return hidden.reshape(hidden.shape[0], len(sets), -1).mean(1)


def plain_hetero(model, x):
    table = model.embedding.weight  # [rows, M, K]
    rows = x + model.embedding.offsets
    emb = table[rows]  # [B, N, M, K]
    outs = []
    for kind, expert, (a, b) in zip(model.expert_kinds, model.experts, model.set_ranges):
        outs.append(plain_expert(kind, expert, [emb[:, :, m] for m in range(a, b)]))
    if model.gate == "mean":
        weights = torch.full((x.shape[0], len(outs)), 1.0 / len(outs), dtype=table.dtype)
    else:
        flat = emb.permute(0, 2, 1, 3).reshape(x.shape[0], -1)  # sets, then fields, then K
        weights = torch.softmax(flat @ model.gate_layer.weight.T + model.gate_layer.bias, -1)
    mixed = sum(weights[:, i : i + 1] * o for i, o in enumerate(outs))
    lin, bn, _, _ = model.head.block
    h = torch.relu(bn_eval(mixed @ lin.weight.T + lin.bias, bn))
    return (h @ model.head.out.weight.T + model.head.out.bias).squeeze(-1)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize(
    "scale,multi,options",
    [
        (6, True, {}),  # groups of 2, 2, 1, 1
        (5, True, {"sets_per_expert": (1, 2, 1, 1), "gate": "mean"}),
        (2, False, {}),  # SE: all experts on one set of 20
        (6, True, {"experts": OTHER_KINDS}),  # groups of 2, 2, 2
        (2, False, {"experts": OTHER_KINDS}),
        (8, True, {"experts": ALL_KINDS, "gate": "mean"}),  # groups of 2, 1, ..., 1
    ],
    ids=[
        "ME-equal-groups",
        "ME-given-groups-mean-gate",
        "SE",
        "ME-xdeepfm-autoint-finalmlp",
        "SE-xdeepfm-autoint-finalmlp",
        "ME-every-kind-mean-gate",
    ],
)
def test_equals_a_plain_per_expert_implementation(backend, scale, multi, options):
    model = small(scale, multi, **options).double().to(DEVICE).eval()
    randomize(model)
    x = random_x().to(DEVICE)
    expected = plain_hetero(model, x)
    model.backend = backend
    assert all(e.backend == backend for e in model.experts)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    # the path of an embedding gathered elsewhere (TorchRec) is the same function
    torch.testing.assert_close(model.forward_embeddings(model.lookup(x)), expected)


@pytest.mark.parametrize("experts", [KINDS, OTHER_KINDS], ids=["projected", "other"])
def test_gradients_reach_every_parameter_and_the_gate_learns(experts):
    model = small(experts=experts)
    x = random_x(16)
    with torch.no_grad():
        model.gate_layer.weight.normal_(0, 0.1)  # off its zero init, so every path is live
    (model(x) * torch.randn(16)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    before = model.gate_average.clone()
    model(x)  # a training-mode forward moves the running mean of the gate's weights
    assert not torch.equal(model.gate_average, before)
    assert model.gate_average.sum().item() == pytest.approx(1.0)
    model.eval()
    after = model.gate_average.clone()
    model(x)
    assert torch.equal(model.gate_average, after)


def test_scale_is_the_number_of_sets_and_embedding_budget_equals_me():
    for scale in (1, 4, 6):
        het = small(scale)
        me = fm.build("dcnv2", FIELD_DIMS, scale, multi=True, hidden_dim=8)
        se = fm.build("dcnv2", FIELD_DIMS, scale, multi=False, hidden_dim=8)
        n = het.embedding.weight.numel()
        assert n == me.embedding.weight.numel() == se.embedding.weight.numel()
        assert het.spec.mode == "me" and het.num_sets == scale
    assert small(6).set_ranges == ((0, 2), (2, 4), (4, 5), (5, 6))
    assert small(6).expert_sets() == {"dcnv2": [0, 1], "nfwfm": [2, 3], "ipnn": [4], "dnn": [5]}
    assert small(2, multi=False).set_ranges == ((0, 1),) * 4
    # default experts: the first min(M, 4) kinds for ME, all four on SE's one set
    assert fm.build("hetero", FIELD_DIMS, 2, hidden_dim=8).expert_kinds == ("dcnv2", "nfwfm")
    assert fm.build("hetero", FIELD_DIMS, 1, hidden_dim=8).expert_kinds == KINDS
    # IPNN follows the ME rule (products only) even in a group of one set
    assert not small(4).experts[2].concat_embeddings
    assert small(1).experts[2].concat_embeddings


def test_spec_rebuilds_the_same_model():
    model = small(6, experts="dcnv2,dnn", gate="mean")
    spec = fm.ModelSpec.from_dict(json.loads(json.dumps(model.spec.to_dict())))
    again = spec.build()
    assert again.expert_kinds == ("dcnv2", "dnn") and again.gate == "mean"
    again.load_state_dict(model.state_dict())
    x = random_x()
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


@pytest.mark.parametrize(
    "options,match",
    [
        ({"experts": ("dcnv2", "lr")}, "unknown expert kind"),
        ({"experts": ("dnn", "dnn")}, "each kind once"),
        ({"experts": ()}, "non-empty"),
        ({"gate": "max"}, "gate must be"),
        ({"sets_per_expert": (3, 1, 1, 1)}, "sum to the 4 sets"),
        ({"sets_per_expert": (4, 0, 0, 0)}, "at least one set"),
        ({"expert_options": {"autoint": {}}}, "not experts"),
        (
            {"experts": ("dnn", "autoint"), "expert_options": {"autoint": {"use_mlp": True}}},
            "add dnn to experts",
        ),
        (
            {"expert_options": {"dcnv2": {"nonlinear_projection": False}}},
            "nonlinear_projection is the model's option",
        ),
    ],
)
def test_bad_arguments_name_the_argument(options, match):
    with pytest.raises(ValueError, match=match):
        small(4, **options)


def test_more_experts_than_sets_is_refused():
    with pytest.raises(ValueError, match="need at least 4 embedding sets"):
        small(3)


def test_grouped_analysis_separates_same_and_different_kinds():
    # sets 0 and 1 identical (kind a), set 2 independent (kind b)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 50, 4, generator=g, dtype=torch.float64)
    tables = [torch.cat([base, base, torch.randn(1, 50, 4, generator=g, dtype=torch.float64)])]
    groups = {"a": [0, 1], "b": [2]}
    div = grouped_diversity(tables, groups)
    assert div["within_kind"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert div["between_kinds"]["mean"] > 0.5
    assert set(div["kind_pairs"]) == {"a|a", "a|b"}
    ia = group_information_abundance(tables, groups)
    # two copies of one set have the IA of that set alone
    assert ia["a"][0] == pytest.approx(group_information_abundance(tables, {"x": [0]})["x"][0])
    with pytest.raises(ValueError, match="at most once"):
        grouped_diversity(tables, {"a": [0, 0]})


# -- fresh processes --------------------------------------------------------------------------
COMPILE_SCRIPT = r"""
import sys
import torch
import fastme.models as fm

backend, device, experts = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
compiler = "inductor" if device == "cuda" else "aot_eager"
small = {"dcnv2": {"num_cross_layers": 2}, "xdeepfm": {"cin_layer_sizes": (3, 2)},
         "autoint": {"attention_dim": 4, "num_attention_layers": 2}}
torch.manual_seed(0)
model = fm.build("hetero", [3, 5, 2, 4], 5, backend=backend, hidden_dim=8, experts=experts,
                 expert_options={k: v for k, v in small.items() if k in experts})
model = model.double().to(device).eval()
with torch.no_grad():
    model.gate_layer.weight.normal_()
g = torch.Generator().manual_seed(1)
x = torch.stack([torch.randint(0, d, (6,), generator=g) for d in [3, 5, 2, 4]], 1).to(device)
compiled = torch.compile(model, fullgraph=True, backend=compiler)
logits = compiled(x)                       # the first call of any fastme op in this process
logits.sum().backward()
grads = {n: p.grad.clone() for n, p in model.named_parameters()}
model.zero_grad(set_to_none=True)
eager = model(x)
eager.sum().backward()
torch.testing.assert_close(logits, eager, rtol=1e-9, atol=1e-9)
for n, p in model.named_parameters():
    torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-9, msg=n)
print("compiled ok")
"""


@pytest.mark.parametrize("experts", [KINDS, OTHER_KINDS], ids=["projected", "other"])
@pytest.mark.parametrize("backend", ops.available_backends(DEVICE))
def test_compiled_fullgraph_in_fresh_process(backend, experts):
    env = dict(os.environ)
    if DEVICE == "cpu":
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, backend, DEVICE, ",".join(experts)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "compiled ok" in done.stdout


#: (scale, experts, more --model-option values) of the runs trained through the command line:
#: projected kinds one set each, and the other kinds with two sets of xdeepfm (a finite
#: diversity within a kind).
CLI_RUNS = {
    "projected": ("3", "dcnv2,nfwfm,dnn", []),
    "other": (
        "4",
        "xdeepfm,autoint,finalmlp",
        ["expert_options={'autoint': {'attention_dim': 8, 'num_attention_layers': 2}}"],
    ),
}


@pytest.fixture(scope="module", params=sorted(CLI_RUNS))
def trained(request, tmp_path_factory):
    """A small hetero run trained through the command line (the built-in data at its default
    size: ``fastme predict`` scores it with the training vocabulary)."""
    scale, experts, more = CLI_RUNS[request.param]
    tmp = tmp_path_factory.mktemp("hetero")
    argv = [
        "train",
        "--model",
        "hetero",
        "--mode",
        "me",
        "--scale",
        scale,
        "--model-option",
        f"experts={experts}",
        *(arg for option in more for arg in ("--model-option", option)),
        "--model-option",
        "hidden_dim=8",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--batch-size",
        "1024",
        "--no-progress",
        "--out",
        str(tmp / "run"),
    ]
    assert main(argv) == 0
    return tmp, experts


def test_cli_train_predict_analyze(trained, tmp_path, capsys):
    trained, experts = trained
    kinds = experts.split(",")
    run = trained / "run"
    spec = torch.load(run / "best.pt", weights_only=False)["spec"]
    assert spec["name"] == "hetero" and spec["options"]["experts"] == experts
    out = tmp_path / "p.csv"
    assert (
        main(["predict", str(run), "--data", "synthetic", "--out", str(out), "--no-progress"]) == 0
    )
    assert len(out.read_text().splitlines()) > 1000
    capsys.readouterr()
    assert main(["analyze", str(run), "--out", str(tmp_path / "an")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "an" / "analysis.json").read_text())
    ex = result["experts"]
    sets = {"dcnv2": [0], "nfwfm": [1], "dnn": [2]}
    if kinds[0] == "xdeepfm":
        sets = {"xdeepfm": [0, 1], "autoint": [2], "finalmlp": [3]}
    assert ex["kinds"] == kinds and ex["sets"] == sets
    assert "experts (sets): " + ", ".join(f"{k} {v}" for k, v in sets.items()) in printed
    assert len(ex["mean_ia_per_set"]) == sum(map(len, sets.values()))
    assert sum(ex["gate_average"]) == pytest.approx(1.0)
    assert set(ex["mean_ia_per_kind"]) == set(kinds)
    div = ex["diversity"]
    assert div["between_kinds"]["mean"] > 0
    if kinds[0] == "xdeepfm":  # two sets of one kind: diversity within that kind, and its pair
        assert 0 < div["within_kind"]["mean"] <= 1
        assert div["kind_pairs"]["xdeepfm|xdeepfm"] == pytest.approx(div["within_kind"]["mean"])
        assert "diversity between sets of the same kind 0." in printed
    else:
        assert div["within_kind"]["mean"] is None  # NaN, written as null: no pair of one kind
        assert "same kind n/a (each kind has one set)" in printed


def test_export_pt2_and_onnx_round_trip_in_fresh_process(trained, tmp_path):
    import numpy as np

    from fastme.train import load_trained

    run = trained[0] / "run"
    model, _ = load_trained(run)
    model.eval()
    dims = list(model.field_dims)
    g = torch.Generator().manual_seed(3)
    x = torch.stack([torch.randint(0, d, (5,), generator=g) for d in dims], 1)
    with torch.no_grad():
        expected = torch.sigmoid(model(x)).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    formats = ["pt2"]
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    for fmt in formats:
        out = tmp_path / f"model.{fmt}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        if fmt == "pt2":
            code = (
                "import sys; sys.modules['fastme'] = None\n"
                "import numpy as np, torch\n"
                "m = torch.export.load('model.pt2').module()\n"
                "np.save('y.npy', m(torch.from_numpy(np.load('x.npy'))).detach().numpy())\n"
            )
        else:
            code = (
                "import numpy as np, onnxruntime as ort\n"
                "s = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])\n"
                "np.save('y.npy', s.run(None, {'x': np.load('x.npy').astype(np.int64)})[0])\n"
            )
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)
        got = np.load(tmp_path / "y.npy")
        np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-5, atol=1e-6, err_msg=fmt)
