"""ModelSpec: made by models.build, stored in checkpoints and results, rebuilds the model."""

import json

import pytest
import torch

from fastme.data import make_synthetic
from fastme.models import ModelSpec, build
from fastme.train import TrainConfig, load_trained, train
from fastme.train.trainer import ResumeError

DIMS = [3, 7, 12, 5]


def test_build_attaches_a_spec_that_round_trips():
    model = build("DCNv2", DIMS, scale=3, multi=True, hidden_dim=16, backend="reference")
    spec = model.spec
    assert spec == ModelSpec("dcnv2", "me", 3, DIMS, {"hidden_dim": 16})
    assert "backend" not in spec.options  # the backend is a runtime choice, not the model
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    rebuilt = again.build(backend="reference")
    assert (rebuilt.num_sets, rebuilt.embed_dim, rebuilt.hidden_dim) == (3, 10, 16)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(name="nope"), "unknown model"),
        (dict(mode="xx"), "mode"),
        (dict(scale=0), "scale"),
        (dict(field_dims=[3, 0]), "field_dims"),
        (dict(options={"backend": "cuda"}), "backend"),
    ],
)
def test_bad_specs_are_refused(bad, message):
    fields = dict(name="dnn", mode="se", scale=1, field_dims=DIMS, options={})
    fields.update(bad)
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_dict(fields)


def test_checkpoint_and_results_carry_the_spec_and_load_trained_rebuilds(tmp_path):
    data = make_synthetic(1_200, field_dims=DIMS, min_count=0)
    torch.manual_seed(0)
    model = build("dnn", DIMS, 2, multi=True, hidden_dim=8)
    cfg = TrainConfig(
        epochs=1, batch_size=256, progress=False, verbose=False, out_dir=str(tmp_path)
    )
    results = train(model, data, cfg)
    assert results["spec"] == model.spec.to_dict()
    assert json.loads((tmp_path / "results.json").read_text())["spec"] == model.spec.to_dict()
    rebuilt, ckpt = load_trained(tmp_path)  # the run directory: its best.pt
    assert ckpt["spec"] == model.spec.to_dict()
    x = torch.from_numpy(data.x[:50])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    # resuming the run with another model is refused before any weights are loaded
    other = build("dnn", DIMS, 2, multi=False, hidden_dim=8)
    with pytest.raises(ResumeError, match="another model"):
        train(
            other,
            data,
            TrainConfig(
                epochs=2,
                batch_size=256,
                progress=False,
                verbose=False,
                out_dir=str(tmp_path),
                resume=True,
            ),
        )


def test_load_trained_explains_bad_files(tmp_path):
    garbage = tmp_path / "x.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fastme checkpoint"):
        load_trained(garbage)
    torch.save({"model": {}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="no model spec"):
        load_trained(tmp_path / "old.pt")
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        load_trained(tmp_path)
