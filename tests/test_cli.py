"""The command line as a whole: one definition of the shared arguments, help texts that say each
default once and only where it means something."""

import argparse

import pytest

from fastme.cli import build_parser, main
from fastme.ops import BACKENDS


def _commands(parser):
    """(name, parser) of every command, experiments included."""
    sub = parser._subparsers._group_actions[0]
    for name, command in sub.choices.items():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            yield from ((f"{name} {n}", p) for n, p in nested[0].choices.items())
        else:
            yield name, command


def test_help_says_a_default_once_and_only_a_meaningful_one():
    for name, command in _commands(build_parser()):
        text = command.format_help()
        for empty in ("None", "True", "False", "[]"):
            assert f"(default: {empty})" not in text, (name, empty)
        formatter = command._get_formatter()
        for action in command._actions:
            if action.help:
                shown = formatter._expand_help(action)
                assert shown.count("default") <= 1, (name, shown)
    train = dict(_commands(build_parser()))["train"].format_help()
    assert "(default: dcnv2)" in train and "--no-progress" in train


def test_shared_arguments_have_one_definition():
    seen = {}
    for name, command in _commands(build_parser()):
        for action in command._actions:
            for flag in action.option_strings:
                seen.setdefault(flag, []).append((name, action))
    for flag in (
        "--model",
        "--mode",
        "--scale",
        "--backend",
        "--model-option",
        "--data",
        "--cache-dir",
        "--synthetic-samples",
        "--data-option",
        "--device",
        "--no-progress",
        "--precision",
        "--threads",
    ):
        users = seen[flag]
        assert len(users) >= 2, flag
        # predict's --data and --data-option name the file to score, not training data
        users = [
            (n, a) for n, a in users if not (n == "predict" and flag in ("--data", "--data-option"))
        ]
        helps = {a.help for _, a in users}
        assert len(helps) == 1, (flag, users)
        choices = {tuple(a.choices) if a.choices else None for _, a in users}
        assert len(choices) == 1, (flag, choices)
    for name, action in seen["--backend"]:
        assert list(action.choices) == list(BACKENDS), name
    # every command that computes takes --threads; train, predict and export take --precision
    threads = {name for name, _ in seen["--threads"]}
    assert threads == {
        "train",
        "predict",
        "export",
        "analyze",
        "experiment toy",
        "experiment scale",
    }
    assert {name for name, _ in seen["--precision"]} == {"train", "predict", "export"}
    # the defaults that differ say so by meaning: reference ops for what is exported (plain ATen
    # ops that load with torch alone); scoring picks the fastest kernels of the machine
    backend = {name: action.default for name, action in seen["--backend"]}
    assert backend == {
        "train": "auto",
        "experiment scale": "auto",
        "predict": "auto",
        "export": "reference",
    }


@pytest.mark.parametrize("command", ["predict", "export"])
def test_serving_backends_are_checked_by_the_parser(command, tmp_path, capsys):
    extra = ["--data", "synthetic"] if command == "predict" else ["--out", "m.onnx"]
    with pytest.raises(SystemExit) as stop:
        main([command, str(tmp_path), *extra, "--backend", "nope"])
    assert stop.value.code == 2
    assert "argument --backend: invalid choice: 'nope'" in capsys.readouterr().err


def test_results_page_without_outputs_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["experiment", "results", "--from-outputs", "--out", str(tmp_path / "results.md")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("fastme experiment results: error: ") and "is missing" in err
    assert not (tmp_path / "results.md").exists()


def test_scale_presets_fill_what_the_command_line_leaves_open(tmp_path, monkeypatch, capsys):
    import fastme.experiments.scale as scale

    seen = []

    def fake_run_scale(model, data, scales, train_options, **kwargs):
        seen.append([list(scales), train_options["batch_size"], train_options["lr"]])
        raise ValueError("stop here")

    monkeypatch.setattr(scale, "run_scale", fake_run_scale)
    common = ["experiment", "scale", "--synthetic-samples", "300", "--out", str(tmp_path)]
    for extra in (
        [],
        ["--preset", "paper"],
        ["--preset", "paper", "--lr", "0.01", "--scales", "2"],
    ):
        assert main(common + extra) == 2
    assert seen == [
        [list(scale.DEFAULT_SCALES), 512, 2e-3],
        [[1, 2, 3, 4, 10], 2048, 1e-3],
        [[2], 2048, 0.01],
    ]
    assert "fastme experiment scale: error: stop here" in capsys.readouterr().err


def test_model_and_data_options_read_literals_and_command_line_booleans():
    from fastme.cli.args import key_values

    options = key_values(
        ["a=true", "b=False", "c=3", "d=[1, 2]", "e=upper", "f=TRUE"], "--model-option"
    )
    assert options == {"a": True, "b": False, "c": 3, "d": [1, 2], "e": "upper", "f": True}
    with pytest.raises(ValueError, match="--model-option expects KEY=VALUE"):
        key_values(["novalue"], "--model-option")


def test_the_command_line_keeps_freed_memory_unless_told_not_to(monkeypatch, tmp_path, capsys):
    """fastme/_allocator.py: glibc's thresholds raised on Linux (what every command does at
    start); FASTME_KEEP_FREED_MEMORY=0 leaves the defaults."""
    import sys

    from fastme import _allocator

    monkeypatch.setenv("FASTME_KEEP_FREED_MEMORY", "0")
    assert _allocator.keep_freed_memory() is False
    monkeypatch.delenv("FASTME_KEEP_FREED_MEMORY")
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert _allocator.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr("fastme.cli.keep_freed_memory", lambda: calls.append(1))
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt2")]) == 2
    assert calls == [1] and "fastme export: error:" in capsys.readouterr().err
