"""The method-defined commands (:data:`facelab.methods.ACTION_VERBS`): ``facelab animate``, ``detail``, ``prepare``.

    facelab animate --method NAME [--device auto|cpu|cuda] [method options]
    facelab detail --method NAME [--device auto|cpu|cuda] [method options]
    facelab prepare --method NAME [--device auto|cpu|cuda] [method options]

The core names the verbs; a method that supports one declares an :class:`facelab.methods.ActionEntry` under
``Method.actions[verb]`` with its own options (``facelab methods NAME`` lists them) and what running them does.
"""

from __future__ import annotations

import argparse

from facelab.cli.reconstruct import resolve_device
from facelab.methods import ACTION_VERBS, parse_method_options, resolve_method


def add_parser(sub: argparse._SubParsersAction) -> None:
    for verb, help_text in ACTION_VERBS.items():
        parser = sub.add_parser(verb, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                                epilog="The method's own options follow these (`facelab methods NAME` lists them).",
                                allow_abbrev=False)
        parser.add_argument("--method", default=None, help="an installed method that supports this command "
                                                           "(default: the only one installed)")
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
        parser.set_defaults(func=_run, verb=verb, takes_method_options=True)


def _run(args: argparse.Namespace) -> int:
    method = resolve_method(args.method, args.verb)
    entry = method.actions[args.verb]
    options = parse_method_options(method, args.verb, entry.add_arguments, list(getattr(args, "method_options", [])))
    options.device = resolve_device(args.device)
    return int(entry.run(options) or 0)
