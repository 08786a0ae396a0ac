"""``fastme train`` end to end on small synthetic data."""

import json
import subprocess
import sys

import pytest

from fastme.cli import main
from fastme.train import load_checkpoint

SMALL = [
    "--data",
    "synthetic",
    "--synthetic-samples",
    "20000",
    "--data-option",
    "field_dims=[4,8,16,32,64,128,256,512]",
    "--model-option",
    "hidden_dim=32",
    "--batch-size",
    "512",
    "--no-progress",
]


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "dcnv2",
            "--mode",
            "me",
            "--scale",
            "2",
            "--epochs",
            "2",
            "--lr",
            "3e-3",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["test_auc"] > 0.65
    assert results["epochs"] == 2 and results["model"]["num_sets"] == 2
    assert results["info"]["model"] == "dcnv2" and results["info"]["mode"] == "me"
    assert results["config"]["batch_size"] == 512 and results["config"]["lr"] == 3e-3
    for needle in (
        "test AUC",
        "logloss",
        "field IA",
        "samples/s",
        str(out / "results.json"),
        str(out / "best.pt"),
    ):
        assert needle in printed
    assert f"{results['test_auc']:.5f}" in printed

    # resume the finished run with a larger epoch budget: it continues from epoch 2
    code = main(
        [
            "train",
            "--model",
            "dcnv2",
            "--mode",
            "me",
            "--scale",
            "2",
            "--epochs",
            "3",
            "--lr",
            "3e-3",
            "--out",
            str(out),
            "--resume",
            *SMALL,
        ]
    )
    assert code == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 3
    # ... but not with another learning rate
    code = main(
        [
            "train",
            "--model",
            "dcnv2",
            "--mode",
            "me",
            "--scale",
            "2",
            "--epochs",
            "3",
            "--out",
            str(out),
            "--resume",
            *SMALL,
        ]
    )
    assert code == 2 and "cannot resume" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert (
        main(
            ["train", "--data", f"criteo:{tmp_path / 'missing.txt'}", "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # refused before any data is loaded
        main(["train", "--model", "nope", "--data", f"criteo:{tmp_path / 'missing.txt'}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "fastme train: error: argument --model: invalid choice: 'nope'" in err
    with pytest.raises(SystemExit):
        main(["train", "--scale", "0"])
    assert "--scale: expected a positive integer" in capsys.readouterr().err
    assert main(["train", "--data", "criteo:x", "--synthetic-samples", "10"]) == 2
    assert "fastme train: error: --synthetic-samples only applies" in capsys.readouterr().err
    assert main(["train", "--model-option", "no_equals_sign"]) == 2
    assert "--model-option expects KEY=VALUE" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "fastme", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    for flag in (
        "--model",
        "--mode",
        "--scale",
        "--data",
        "--epochs",
        "--batch-size",
        "--device",
        "--backend",
        "--out",
        "--resume",
        "--track-ia",
        "--seed",
    ):
        assert flag in done.stdout


def test_cli_defaults_are_the_config_defaults():
    from fastme.cli import build_parser
    from fastme.models import MODELS
    from fastme.ops import BACKENDS
    from fastme.train import TrainConfig
    from fastme.train.config import config_options

    from fastme.experiments.scale import DEFAULT_TRAIN, PRESETS

    # the scaling sweep's documented CPU-sized batch and learning rate replace the paper's: its
    # --preset (default cpu) fills them when the command line leaves them open
    assert PRESETS["cpu"]["train"] == DEFAULT_TRAIN
    for argv, defaults in (
        (["train"], TrainConfig()),
        (["experiment", "scale"], TrainConfig(**DEFAULT_TRAIN)),
    ):
        args = build_parser().parse_args(argv)
        options = config_options(args)
        if argv[0] == "experiment":
            assert all(options.pop(name) is None for name in DEFAULT_TRAIN)
        assert options.pop("device") == "auto"  # the command line picks the GPU when there is one
        assert "epochs" in options and "progress" in options
        for name, value in options.items():
            if name != "out_dir":
                assert value == getattr(defaults, name), name
    parser = build_parser()
    for flag, choices in (("--model", MODELS), ("--backend", BACKENDS)):
        action = next(
            a
            for a in parser._subparsers._group_actions[0].choices["train"]._actions
            if flag in a.option_strings
        )
        assert list(action.choices) == list(choices)


TINY = [
    "--data",
    "synthetic",
    "--synthetic-samples",
    "1000",
    "--data-option",
    "field_dims=[4,8,16]",
    "--model",
    "dnn",
    "--model-option",
    "hidden_dim=8",
    "--batch-size",
    "256",
    "--epochs",
    "1",
    "--no-progress",
]


def test_user_mistakes_are_one_line_errors_before_any_data_is_loaded(tmp_path, capsys, monkeypatch):
    import fastme.data

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(fastme.data, "load_dataset", no_loading)
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        (["--out", str(afile)], "is an existing file"),
        (["--model-option", "no_such_option=1"], "no_such_option"),
        (["--backend", "cuda", "--device", "cpu"], "--backend cuda cannot run on cpu"),
    ]
    for extra, message in cases:
        assert main(["train", *TINY, "--out", str(tmp_path / "r"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastme train: error: ") and message in err
        assert "Traceback" not in err


def test_train_takes_the_run_lock_once(tmp_path, monkeypatch):
    import fastme.train.trainer as trainer

    taken, real = [], trainer.file_lock

    def counting(path, *args, **kwargs):
        taken.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(trainer, "file_lock", counting)
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 0
    assert taken == [tmp_path / "r" / ".lock"]


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, interrupt_epoch):
    interrupt_epoch(2)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "fastme train: interrupted" in err and "--resume" in err and str(out) in err
    assert "Traceback" not in err


def test_a_non_finite_loss_is_an_error_with_a_hint(tmp_path, capsys, monkeypatch):
    import fastme.train.trainer as trainer

    monkeypatch.setattr(
        trainer.F,
        "binary_cross_entropy_with_logits",
        lambda logits, y: (logits * float("nan")).mean(),
    )
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastme train: error: ") and "--lr 0.0001" in err


def test_default_out_names_differ_with_the_data_and_settings():
    from fastme.cli import build_parser
    from fastme.cli.args import data_options
    from fastme.cli.train import identity_of
    from fastme.train.checkpoint import default_out_dir

    def out_of(*argv):
        args = build_parser().parse_args(["train", *argv])
        return default_out_dir(identity_of(args, data_options(args), {}))

    base = out_of("--data", "criteo:/data/a.txt")
    assert base.startswith("runs/dcnv2-sex1-criteo-seed0-")
    assert base == out_of("--data", "criteo:/data/a.txt", "--no-progress", "--device", "cpu")
    others = {
        out_of("--data", "criteo:/data/b.txt"),
        out_of("--data", "criteo:/data/a.txt", "--min-count", "4"),
        out_of("--data", "criteo:/data/a.txt", "--lr", "0.01"),
        out_of("--data", "criteo:/data/a.txt", "--batch-size", "512"),
    }
    assert len(others) == 4 and base not in others
    # what a resume may change is not part of the run's identity, so --resume finds the run
    assert base == out_of("--data", "criteo:/data/a.txt", "--epochs", "5", "--patience", "9")


def test_resume_with_more_epochs_continues_the_default_out_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 0
    first = capsys.readouterr().out
    (out,) = (tmp_path / "runs").iterdir()
    assert str(out.relative_to(tmp_path)) in first
    assert main(["train", *TINY, "--epochs", "2", "--patience", "5", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "starting a fresh run" not in printed and "resumed" in printed
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [out.name]
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2 and len(results["history"]) == 2
    assert results["config"]["epochs"] == 2 and results["config"]["patience"] == 5


def test_a_finished_run_is_reported_not_trained_again(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "results.json").stat().st_mtime_ns, (out / "best.pt").stat().st_mtime_ns
    assert main(["train", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "already holds this run, finished" in printed and "nothing was trained" in printed
    assert "test AUC" in printed and str(out / "results.json") in printed
    assert (
        (out / "results.json").stat().st_mtime_ns,
        (out / "best.pt").stat().st_mtime_ns,
    ) == before
    # asking for more epochs without --resume says how to get them
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 0
    assert "add --resume to continue it with --epochs 3" in capsys.readouterr().out
    assert (out / "results.json").stat().st_mtime_ns == before[0]


def test_an_interrupted_try_is_not_replaced_without_resume(tmp_path, capsys, interrupt_epoch):
    interrupt_epoch(2)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 130
    saved = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastme train: error: ") and "--resume" in err and "--overwrite" in err
    assert (out / "last.pt").read_bytes() == saved


def test_another_run_in_out_is_not_replaced_silently(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    assert main(["train", *TINY, "--out", str(out)]) == 0  # the same run again: reported
    assert main(["train", *TINY, "--lr", "0.01", "--out", str(out)]) == 2
    assert "holds another run (it differs in config)" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["config"] == first["config"]
    assert main(["train", *TINY, "--lr", "0.01", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["lr"] == 0.01


def test_warnings_are_one_line_messages(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    lines = ["\t".join([str(i % 2)] + [str(i % 7)] * 13 + [f"c{i % 5}"] * 26) for i in range(400)]
    raw.write_text("\n".join(lines + ["1\t2"]) + "\n")
    code = main(
        [
            "train",
            "--data",
            f"criteo:{raw}",
            "--cache-dir",
            str(tmp_path / "c"),
            "--min-count",
            "1",
            "--model",
            "dnn",
            "--model-option",
            "hidden_dim=8",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "fastme train: warning: criteo: skipped 1 malformed rows" in err
    assert "RuntimeWarning" not in err and "warnings.warn" not in err and "hour" not in err


def test_analyze_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "best.pt"
    bogus.write_bytes(b"not a checkpoint at all")
    assert main(["analyze", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastme analyze: error: ") and str(bogus) in err


def test_a_busy_or_unwritable_out_is_refused_before_loading(
    tmp_path, capsys, monkeypatch, run_lock_holder
):
    import os

    out = tmp_path / "run"
    holder = run_lock_holder(out)
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert f"is in use by pid {holder.pid}" in capsys.readouterr().err
    # (root may write anywhere, so an unwritable directory is simulated)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    (tmp_path / "ro").mkdir()
    assert main(["train", *TINY, "--out", str(tmp_path / "ro")]) == 2
    assert "cannot write to the output directory" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(tmp_path / "new" / "run")]) == 2
    assert (
        f"cannot create the output directory {tmp_path / 'new' / 'run'} in {tmp_path}"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "new").exists()


def test_rejected_train_commands_leave_nothing_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/<name> here
    (tmp_path / "mine").mkdir()
    bad_data = [["--data", "nosuch:thing"], ["--data", f"criteo:{tmp_path / 'nope.txt'}"]]
    for data in bad_data:
        for out in ([], ["--out", f"{tmp_path}/new/run"], ["--out", str(tmp_path / "mine")]):
            assert (
                main(
                    [
                        "train",
                        "--model",
                        "dnn",
                        "--epochs",
                        "1",
                        "--no-progress",
                        *data,
                        "--cache-dir",
                        str(tmp_path / "cache"),
                        *out,
                    ]
                )
                == 2
            )
            err = capsys.readouterr().err
            assert err.startswith("fastme train: error: ") and data[1].split(":")[-1] in err
            assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
            assert list((tmp_path / "mine").iterdir()) == []  # the user's directory stays


def test_table_optimizer_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", *TINY, "--table-optimizer", "adamw"])
    assert stop.value.code == 2
    assert "argument --table-optimizer: invalid choice: 'adamw'" in capsys.readouterr().err
    out = tmp_path / "r"
    argv = ["train", *TINY, "--table-optimizer", "rowwise_adagrad", "--table-lr", "0.02"]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["table_optimizer"] == "rowwise_adagrad"
    assert results["config"]["table_lr"] == 0.02
    saved = load_checkpoint(out / "last.pt")["optimizer"]
    assert saved["table_optimizer"] == "rowwise_adagrad" and saved["table"]["step"] > 0
