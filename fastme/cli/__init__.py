"""The ``fastme`` command line (also ``python -m fastme``).

The only place that parses arguments: the shared ones are defined once in
:mod:`fastme.cli.args`, and each command is a module here whose ``add_parser(subparsers)``
registers it with a ``func(args) -> int`` that calls the library.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from fastme._allocator import keep_freed_memory
from fastme.cli.args import HelpFormatter, set_threads

#: One module per command, in the order of ``fastme --help``.
COMMANDS = ("train", "experiment", "analyze", "predict", "export")


def build_parser() -> argparse.ArgumentParser:
    from fastme import __version__

    parser = argparse.ArgumentParser(
        prog="fastme", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fastme {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fastme.cli.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # The command line is a process of its own: it keeps freed memory for the next batch
    # instead of page-faulting it in again (fastme/_allocator.py; FASTME_KEEP_FREED_MEMORY=0
    # keeps glibc's defaults).
    keep_freed_memory()
    command = " ".join(filter(None, (args.command, getattr(args, "experiment", None))))
    with warnings.catch_warnings():
        # A warning is a message to the user here, not to a programmer: one line, no source.
        warnings.showwarning = lambda message, *_, **__: print(
            f"fastme {command}: warning: {message}", file=sys.stderr, flush=True
        )
        try:
            # torch's CPU threads, chosen once for the whole command and said on stdout, where
            # the commands that compute for long log; export says only what it exported, and a
            # torchrun rank other than 0 says nothing (one line per run is enough)
            if hasattr(args, "threads"):
                line = set_threads(args.threads)
                if args.command != "export" and os.environ.get("RANK", "0") == "0":
                    print(line, flush=True)
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"fastme {command}: interrupted", file=sys.stderr, flush=True)
            return 130


if __name__ == "__main__":
    sys.exit(main())
