"""``facelab methods [NAME] [--json]``: the installed methods (:mod:`facelab.methods`), or one method's details.

Without NAME: one line per installed method (family, the commands it supports, description), and the methods whose
entry point does not load, with the reason. With NAME: its benchmarks, configs and its own options for
``facelab reconstruct`` / ``facelab evaluate`` (they follow the common options on those command lines).
"""

from __future__ import annotations

import argparse
import json

from facelab.methods import describe, get_method, load_methods, method_options_parser


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("methods", help="list the installed methods, or one method's options",
                            description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("name", nargs="?", default=None, metavar="NAME", help="a method: show its details")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.name is None:
        methods, failures = load_methods()
        if args.json:
            print(json.dumps({"methods": [describe(m) for m in methods.values()], "failed": failures}, indent=1))
            return 0
        if not methods and not failures:
            print("no method is installed (no 'facelab.methods' entry point)")
        width = max(map(len, [*methods, *failures]), default=4)
        for method in methods.values():
            print(f"{method.name:<{width}}  {method.family:<8}  {'/'.join(method.commands):<26}  {method.description}")
        for name, why in failures.items():
            print(f"{name:<{width}}  (does not load: {why})")
        return 0
    method = get_method(args.name)
    if args.json:
        print(json.dumps(describe(method), indent=1))
        return 0
    print(f"{method.name} ({method.family}): {method.description}")
    print(f"commands: {', '.join(method.commands) or 'none'}")
    for name, bench in method.benchmarks.items():
        print(f"bench {name}: {bench.description}")
    for name, path in method.configs.items():
        print(f"config {name}: {path}")
    for command, entry in (("reconstruct", method.reconstruct), ("evaluate", method.evaluate)):
        if entry is None:
            continue
        print()
        if command == "reconstruct":
            print(f"reconstruct --ckpt: {entry.checkpoint_help}; crop: {entry.crop}, scale {entry.crop_scale}")
        else:
            print(f"evaluate --data: {', '.join(entry.data)}; --init: {'yes' if entry.supports_init else 'no'}")
        print(method_options_parser(method, command, entry.add_arguments).format_help().rstrip())
    for verb, action in method.actions.items():
        print()
        print(f"{verb}: {action.help}" if action.help else verb)
        print(method_options_parser(method, verb, action.add_arguments).format_help().rstrip())
    return 0
