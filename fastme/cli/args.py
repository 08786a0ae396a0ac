"""The arguments several commands share, defined once, and the help formatter of every command.
A command whose default means something else (``fastme analyze``: the checkpoint's) changes it
with ``set_defaults`` and says so in its group's description: a flag's help is the same everywhere.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

from fastme.data.formats import help_text
from fastme.models import MODELS
from fastme.ops import BACKENDS

DATA_HELP = help_text()  # written by the formats themselves (fastme/data/formats/)

#: Kinds of --data that are preprocessed into a cache (they take --min-count and show progress).
PREPROCESSED = ("criteo", "avazu", "csv", "parquet")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not say its default already and X means
    something: not None, not a flag's True/False, not the empty list of a repeatable option."""

    def _get_help_string(self, action):
        default = action.default
        if (
            "default" in (action.help or "")
            or default is None
            or isinstance(default, bool)
            or (isinstance(default, list) and not default)
        ):
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


_KEY_VALUE = dict(action="append", default=[], metavar="KEY=VALUE")

THREADS_HELP = (
    "CPU threads of torch's operators (torch.set_num_threads; default $OMP_NUM_THREADS when "
    "set, else the physical cores this process may use); on a machine busy with other work "
    "fewer run faster, often 1 (docs/training.md)"
)

#: Every shared argument: name -> (flag, add_argument keywords).
ARGUMENTS = {
    # model
    "model": (
        "--model",
        dict(
            default="dcnv2",
            type=str.lower,
            choices=list(MODELS),
            help="backbone: " + ", ".join(MODELS),
        ),
    ),
    "mode": (
        "--mode",
        dict(
            choices=("se", "me"),
            default="se",
            help="se: one embedding of size base*scale; me: scale embeddings of size base",
        ),
    ),
    "scale": (
        "--scale",
        dict(type=positive_int, default=1, help="model size multiplier (1, 2, 3, 4, 10)"),
    ),
    "backend": (
        "--backend",
        dict(default="auto", choices=BACKENDS, help="implementation of the fused ops"),
    ),
    "model_option": (
        "--model-option",
        dict(
            **_KEY_VALUE, help="extra model constructor argument, e.g. hidden_dim=64 (repeatable)"
        ),
    ),
    # machine
    "threads": ("--threads", dict(type=positive_int, default=None, help=THREADS_HELP)),
    # data
    "data": ("--data", dict(default="synthetic", help=DATA_HELP)),
    "cache_dir": (
        "--cache-dir",
        dict(
            default=None,
            help="where raw-file caches live (default $FASTME_CACHE_DIR or ~/.cache/fastme)",
        ),
    ),
    "synthetic_samples": (
        "--synthetic-samples",
        dict(
            type=int, default=None, help="rows of the synthetic data (default: the built-in size)"
        ),
    ),
    "min_count": (
        "--min-count",
        dict(
            type=int,
            default=None,
            help="raw data: values seen fewer times become the field's OOV index (default 10 for "
            "Criteo, 2 for Avazu, 1 for CSV and Parquet; the reference code uses 4 for Avazu)",
        ),
    ),
    "avazu_hour": (
        "--avazu-hour",
        dict(
            choices=("split", "raw"),
            default=None,
            help="Avazu hour: split into hour-of-day and weekday (default) or the raw YYMMDDHH "
            "value as one field (the reference code)",
        ),
    ),
    "rebuild_cache": (
        "--rebuild-cache",
        dict(action="store_true", help="preprocess raw data again"),
    ),
    "data_option": (
        "--data-option",
        dict(
            **_KEY_VALUE,
            help="extra load_dataset option, e.g. field_dims=[10,100,1000] or "
            "interaction_scale=2.0 for synthetic data (repeatable)",
        ),
    ),
}
MODEL_ARGUMENTS = ("model", "mode", "scale", "backend", "model_option")
DATA_ARGUMENTS = (
    "data",
    "cache_dir",
    "synthetic_samples",
    "min_count",
    "avazu_hour",
    "rebuild_cache",
    "data_option",
)


def add_arguments(parser, names) -> None:
    """Add the shared arguments ``names`` (keys of :data:`ARGUMENTS`) to a parser or group."""
    for name in names:
        flag, kwargs = ARGUMENTS[name]
        parser.add_argument(flag, dest=name, **kwargs)


def key_values(pairs, flag: str) -> dict:
    """``KEY=VALUE`` strings (a repeatable option such as --model-option) -> dict; values are
    Python literals where they parse as one (``true``/``false`` in any case are booleans, as a
    command line writes them), plain strings otherwise."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
            continue
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain string such as field_pairs=upper
    return options


def data_options(args) -> dict:
    """The options of :func:`fastme.data.load_dataset` that the data arguments ask for; a flag
    that does not apply to the kind of --data is an error rather than ignored."""
    kind = (args.data or "").split(":", 1)[0]
    options = key_values(args.data_option, "--data-option")
    if args.synthetic_samples is not None:
        if kind != "synthetic":
            raise ValueError("--synthetic-samples only applies to --data synthetic")
        options["num_samples"] = args.synthetic_samples
    if args.min_count is not None:
        if kind not in PREPROCESSED:
            raise ValueError("--min-count only applies to criteo:/avazu:/csv:/parquet: data")
        options["min_count"] = args.min_count
    if args.avazu_hour is not None:
        if kind != "avazu":
            raise ValueError("--avazu-hour only applies to avazu: data")
        options["hour"] = args.avazu_hour
    if args.rebuild_cache:
        options["rebuild"] = True
    if kind in (*PREPROCESSED, "npy") and hasattr(args, "progress"):
        options["progress"] = args.progress
    return options


def error(command: str, message) -> int:
    """Report a user mistake the way every command does; returns the exit status 2."""
    print(f"fastme {command}: error: {message}", file=sys.stderr, flush=True)
    return 2


# ---- threads -------------------------------------------------------------------------------------


def _physical_cores(cpus) -> int | None:
    """Distinct (package, core) pairs among the logical CPUs ``cpus`` (Linux sysfs); None where
    the topology cannot be read."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def _cgroup_cpus() -> int | None:
    """The CPUs a cgroup v2 quota allows (``cpu.max``: quota and period), rounded up; None
    without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def default_threads() -> tuple[int, str]:
    """(threads, why): $OMP_NUM_THREADS when set to a positive integer, else the physical cores
    among the CPUs this process may run on (its affinity), within its cgroup's CPU quota.
    Hyper-threads share a core's vector and matrix units: a second thread per core does not
    speed up torch's GEMMs and makes the threads wait for each other."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        cpus = list(range(os.cpu_count() or 1))
    cores = _physical_cores(cpus)
    threads, why = (
        (cores, f"the physical cores of the {len(cpus)} CPUs this process may run on")
        if cores
        else (len(cpus), "the CPUs this process may run on")
    )
    quota = _cgroup_cpus()
    if quota is not None and quota < threads:
        threads, why = quota, "the CPU quota of this process's cgroup"
    return max(1, threads), why


def set_threads(threads: int | None) -> str:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the
    line that says how many and why (and, on a machine whose load average exceeds its CPUs, what
    to try)."""
    import torch

    if threads is None:
        threads, why = default_threads()
    else:
        why = "--threads"
    torch.set_num_threads(threads)
    line = f"threads: {threads} ({why})"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    if threads > 1 and load > (os.cpu_count() or 1):
        line += (
            f"; the machine is busy (load average {load:.1f} on {os.cpu_count()} CPUs): "
            f"--threads 1 may be faster"
        )
    return line
