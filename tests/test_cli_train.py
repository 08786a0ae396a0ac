"""``fastme train`` end to end on small synthetic data."""

import json
import subprocess
import sys

import pytest

from fastme.cli import main

SMALL = ["--data", "synthetic", "--synthetic-samples", "20000",
         "--data-option", "field_dims=[4,8,16,32,64,128,256,512]",
         "--model-option", "hidden_dim=32", "--batch-size", "512", "--no-progress"]


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "dcnv2", "--mode", "me", "--scale", "2", "--epochs", "2",
                 "--lr", "3e-3", "--out", str(out), *SMALL])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["test_auc"] > 0.65
    assert results["epochs"] == 2 and results["model"]["num_sets"] == 2
    assert results["info"]["model"] == "dcnv2" and results["info"]["mode"] == "me"
    assert results["config"]["batch_size"] == 512 and results["config"]["lr"] == 3e-3
    for needle in ("test AUC", "logloss", "field IA", "samples/s", str(out / "results.json")):
        assert needle in printed
    assert f"{results['test_auc']:.5f}" in printed

    # resume the finished run with a larger epoch budget: it continues from epoch 2
    code = main(["train", "--model", "dcnv2", "--mode", "me", "--scale", "2", "--epochs", "3",
                 "--lr", "3e-3", "--out", str(out), "--resume", *SMALL])
    assert code == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 3
    # ... but not with another learning rate
    code = main(["train", "--model", "dcnv2", "--mode", "me", "--scale", "2", "--epochs", "3",
                 "--out", str(out), "--resume", *SMALL])
    assert code == 2 and "cannot resume" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--data", f"criteo:{tmp_path / 'missing.txt'}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # refused before any data is loaded
        main(["train", "--model", "nope", "--data", f"criteo:{tmp_path / 'missing.txt'}"])
    assert stop.value.code == 2
    assert "fastme train: error: argument --model: invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--scale", "0"])
    assert "--scale: expected a positive integer" in capsys.readouterr().err
    assert main(["train", "--data", "criteo:x", "--synthetic-samples", "10"]) == 2
    assert "fastme train: error: --synthetic-samples only applies" in capsys.readouterr().err
    assert main(["train", "--model-option", "no_equals_sign"]) == 2
    assert "--model-option expects KEY=VALUE" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "fastme", "train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for flag in ("--model", "--mode", "--scale", "--data", "--epochs", "--batch-size", "--device",
                 "--backend", "--out", "--resume", "--track-ia", "--seed"):
        assert flag in done.stdout


def test_cli_defaults_are_the_config_defaults():
    from fastme.cli import build_parser
    from fastme.models import MODELS
    from fastme.ops import BACKENDS
    from fastme.train import TrainConfig
    from fastme.train.config import config_options

    from fastme.analysis.scale import DEFAULT_TRAIN

    # the scaling sweep's documented CPU-sized batch and learning rate replace the paper's
    for argv, defaults in ((["train"], TrainConfig()),
                           (["experiment", "scale"], TrainConfig(**DEFAULT_TRAIN))):
        args = build_parser().parse_args(argv)
        options = config_options(args)
        assert options.pop("device") == "auto"  # the command line picks the GPU when there is one
        assert "epochs" in options and "progress" in options
        for name, value in options.items():
            if name != "out_dir":
                assert value == getattr(defaults, name), name
    parser = build_parser()
    for flag, choices in (("--model", MODELS), ("--backend", BACKENDS)):
        action = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                      if flag in a.option_strings)
        assert list(action.choices) == list(choices)
