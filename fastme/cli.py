"""The ``fastme`` command line (also ``python -m fastme``).

Subcommands live next to the code they drive: each module below provides ``add_parsers(subparsers)``
that registers its commands with a ``func(args) -> int`` default.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
import warnings

SUBCOMMAND_MODULES = ("fastme.train.cli", "fastme.analysis.cli", "fastme.serve.cli")


def key_values(pairs, flag: str) -> dict:
    """``KEY=VALUE`` strings (a repeatable option such as --model-option) -> dict; values are
    Python literals where they parse as one, plain strings otherwise."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain string such as field_pairs=upper
    return options


def error(command: str, message) -> int:
    """Report a user mistake the way every subcommand does; returns the exit status 2."""
    print(f"fastme {command}: error: {message}", file=sys.stderr, flush=True)
    return 2


def build_parser() -> argparse.ArgumentParser:
    from fastme import __version__

    parser = argparse.ArgumentParser(prog="fastme", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastme {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue
        module.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "experiment", None))))
    with warnings.catch_warnings():
        # A warning is a message to the user here, not to a programmer: one line, no source.
        warnings.showwarning = lambda message, *_, **__: print(
            f"fastme {command}: warning: {message}", file=sys.stderr, flush=True)
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"fastme {command}: interrupted", file=sys.stderr, flush=True)
            return 130


if __name__ == "__main__":
    sys.exit(main())
