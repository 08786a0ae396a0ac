"""The ``fastme`` command line (also ``python -m fastme``).

Subcommands live next to the code they drive: each module below provides ``add_parsers(subparsers)``
that registers its commands with a ``func(args) -> int`` default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = ("fastme.train.cli", "fastme.analysis.cli")


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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
