"""The ``facelab`` console script: everything that is not training.

    facelab assets synthetic --family flame --out DIR [--seed S] [--size full|tiny]
    facelab bench [NAME] [--device auto|cpu|cuda] [--csv PATH]     # without NAME: the core's and methods' list
    facelab methods [NAME]                                          # installed methods, a method's own options
    facelab preprocess --input DIR_OR_VIDEO --out DIR [--scale 1.6] [--size 224]
    facelab reconstruct --method NAME --ckpt CKPT --input IMAGE|DIR|VIDEO --out DIR [--smooth N] [method options]
    facelab evaluate --method NAME --ckpt CKPT --data synthetic [--json OUT] [method options]
    facelab animate --method NAME [--device D] [method options]    # method-defined (facelab.methods.ACTION_VERBS)
    facelab detail --method NAME [--device D] [method options]
    facelab prepare --method NAME [--device D] [method options]

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser's ``func`` runs it.
Methods plug in through :mod:`facelab.methods`; a subcommand that takes a method's own options sets the parser
default ``takes_method_options=True`` and finds the words the common parser did not know in ``args.method_options``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that contribute subcommands (the core's commands; methods plug in through facelab.methods, not here).
SUBCOMMAND_MODULES = ("facelab.cli.assets", "facelab.cli.bench", "facelab.cli.preprocess", "facelab.cli.reconstruct",
                      "facelab.cli.evaluate", "facelab.cli.methods", "facelab.cli.fit", "facelab.cli.actions")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facelab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``facelab`` console script. Returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_method_options", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.method_options = unknown
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # a clear one-line message for user errors; the traceback with FACELAB_DEBUG=1
        from facelab.errors import FacelabError

        if isinstance(err, (FacelabError, FileNotFoundError, ValueError)) and not _debug():
            print(f"facelab {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


def _debug() -> bool:
    import os

    return os.environ.get("FACELAB_DEBUG", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
