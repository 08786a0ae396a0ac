"""pytest set-up of the benchmark suite: `pytest bench/ --benchmark-only` (see bench/README.md).

The project's pytest configuration (pyproject.toml) collects tests/ and files named test_*.py, so
a plain `pytest` (and CI) never runs benchmarks. Benchmark modules are named bench_*.py and are
collected by the hook below whenever bench/ itself is collected.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parent
# harness, costs and render_results are imported by name, also under --import-mode=importlib
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402
import render_results  # noqa: E402


def pytest_configure(config):
    # Emitted by torch internals on every compile; not about this suite.
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    )


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself, whatever their name.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and file_path.resolve().parent == BENCH_DIR
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    parser.addoption(
        "--fastme-record",
        default=str(BENCH_DIR / "records" / "latest.json"),
        help="where to write this run's record (JSON; default bench/records/"
        "latest.json); render_results.py and plot_results.py read it",
    )


def pytest_terminal_summary(terminalreporter, config):
    if not harness.RECORDS and not harness.UNAVAILABLE:
        return
    harness.finish_run()  # the peak probe again, the load average: did the machine stay quiet?
    data = harness.record()
    path = pathlib.Path(config.getoption("--fastme-record"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    terminalreporter.write_sep("=", "fastme benchmark summary")
    terminalreporter.write_line(render_results.summary(data))
    terminalreporter.write_line(f"\nrecord written to {path}")
