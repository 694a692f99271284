"""The method registry: methods plug into the ``facelab`` commands; the core names none of them.

A method package declares one Python entry point in the group :data:`ENTRY_POINT_GROUP` of its distribution's
metadata (``pyproject.toml``)::

    [project.entry-points."facelab.methods"]
    mymethod = "mymethod:method"          # a module-level facelab.methods.Method

and the object it names describes what the commands need (:class:`Method`): how ``facelab reconstruct`` builds a
reconstructor from a checkpoint (:class:`ReconstructEntry`), how ``facelab evaluate`` scores one
(:class:`EvaluateEntry`), its ``facelab bench`` benchmarks (:class:`Benchmark`) and its training configs. Nothing
is imported until a command needs it: listing the installed methods reads only the entry-point metadata
(:func:`installed_methods`), loading a method imports its descriptor module (:func:`get_method`), and the heavy
parts (networks, checkpoints) are imported by the descriptor's callables when they run.

Adding a method therefore touches no file of ``src/facelab``; after adding the entry point, refresh the editable
install (``pip install --no-deps -e .``) so that the new metadata is visible.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from facelab.errors import FacelabError

if TYPE_CHECKING:
    from pathlib import Path

    from facelab.reconstruction import Reconstructor

__all__ = [
    "ENTRY_POINT_GROUP",
    "ACTION_VERBS",
    "ActionEntry",
    "Benchmark",
    "EvaluateEntry",
    "EvaluateRequest",
    "Evaluation",
    "Method",
    "MethodLoadError",
    "ReconstructEntry",
    "UnknownMethodError",
    "default_method",
    "get_method",
    "installed_methods",
    "describe",
    "load_methods",
    "method_entry_points",
    "method_options_parser",
    "parse_method_options",
    "resolve_method",
]

#: The entry-point group methods register in.
ENTRY_POINT_GROUP = "facelab.methods"

#: Method and benchmark names: what a user types after ``--method`` / ``facelab bench``.
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")

#: ``parser -> None``: adds a method's own command-line options to an ``argparse`` parser.
ArgumentAdder = Callable[[argparse.ArgumentParser], None]


class UnknownMethodError(FacelabError, ValueError):
    """``--method NAME`` names no installed method (the message lists the installed ones)."""


class MethodLoadError(FacelabError, ImportError):
    """An installed method's entry point cannot be imported or does not name a :class:`Method`."""


@dataclass(frozen=True)
class Benchmark:
    """A ``facelab bench NAME`` benchmark: a module, imported only when the benchmark runs.

    The module exposes ``add_arguments(parser)`` (its options), ``run(args) -> list[BenchRow]`` (``args`` also
    carries ``--device`` and ``--csv``) and optionally ``report(rows)``, called after the table.

    Attributes:
        module: import path of the module (e.g. ``"facelab.bench.flame"``).
        description: one line shown in the listing.
    """

    module: str
    description: str

    def load(self) -> ModuleType:
        """Import the module and check that it follows the protocol.

        Raises:
            MethodLoadError: the module cannot be imported or lacks ``add_arguments`` / ``run``.
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise MethodLoadError(f"benchmark module '{self.module}' cannot be imported: {err}") from err
        missing = [name for name in ("add_arguments", "run") if not callable(getattr(module, name, None))]
        if missing:
            raise MethodLoadError(f"benchmark module '{self.module}' has no {' / '.join(missing)} function")
        return module


@dataclass(frozen=True)
class ReconstructEntry:
    """How ``facelab reconstruct --method NAME`` builds the method's reconstructor.

    Attributes:
        from_checkpoint: ``(ckpt, *, model_path, device, options, config_key) ->``
            :class:`facelab.reconstruction.Reconstructor`. ``model_path`` is ``--model-path`` (the morphable model
            asset; None: the one the checkpoint was trained with), ``options`` the parsed method options
            (``add_arguments``), ``config_key`` the option naming ``ckpt`` for error messages. Raises
            ``MissingAssetError`` / ``AssetFormatError`` for bad checkpoints and ``ValueError`` for options the
            checkpoint cannot honour, before any input is read.
        add_arguments: adds the method's own options (they follow the common ones on the command line).
        checkpoint_help: what ``--ckpt`` takes (shown in ``facelab methods NAME``).
        crop_scale: the crop side relative to the face size the method was trained with (``--scale`` default).
        crop: the crop the method was trained with: ``"landmarks"`` (the bounding box of mediapipe's 478
            landmarks) or ``"box"`` (the detector's box); the ``--crop`` default.
    """

    from_checkpoint: Callable[..., Reconstructor]
    add_arguments: ArgumentAdder | None = None
    checkpoint_help: str = "a checkpoint of the method"
    crop_scale: float = 1.6
    crop: str = "landmarks"

    def __post_init__(self) -> None:
        if not callable(self.from_checkpoint):
            raise TypeError(f"ReconstructEntry.from_checkpoint must be callable, got {self.from_checkpoint!r}")
        if self.crop not in ("landmarks", "box") or not self.crop_scale > 0:
            raise ValueError(f"ReconstructEntry: crop must be 'landmarks' or 'box' and crop_scale > 0, got "
                             f"crop={self.crop!r}, crop_scale={self.crop_scale}")


@dataclass(frozen=True)
class EvaluateRequest:
    """The common ``facelab evaluate`` settings handed to a method's evaluator.

    Attributes:
        ckpt: the checkpoint, or None for the method's random initialization (``--init``, a baseline).
        data: the held-out data (one of :attr:`EvaluateEntry.data`).
        num_images: held-out images.
        image_size: crop side; None: the checkpoint's.
        batch_size: images per forward pass.
        device: torch device (resolved: ``"cpu"``, ``"cuda"``, ...).
        seed: data seed; None: the checkpoint's.
    """

    ckpt: str | None
    data: str = "synthetic"
    num_images: int = 256
    image_size: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    seed: int | None = None


class Evaluation(Protocol):
    """What an evaluator returns: a printable table and a JSON file."""

    def format_table(self) -> str: ...

    def write_json(self, path: str | Path) -> Path: ...


@dataclass(frozen=True)
class EvaluateEntry:
    """How ``facelab evaluate --method NAME`` scores a checkpoint.

    Attributes:
        run: ``(request: EvaluateRequest, options: argparse.Namespace) -> Evaluation`` (``options``: the parsed
            method options).
        add_arguments: adds the method's own options.
        data: the ``--data`` values it evaluates on; ``"folder"``: also any folder (``--data DIR``: the user's
            photos or a ``facelab preprocess`` cache; ``EvaluateRequest.data`` is then the path).
        supports_init: ``--init`` (a randomly initialized model as the baseline) is available.
    """

    run: Callable[[EvaluateRequest, argparse.Namespace], Evaluation]
    add_arguments: ArgumentAdder | None = None
    data: tuple[str, ...] = ("synthetic",)
    supports_init: bool = True

    def __post_init__(self) -> None:
        if not callable(self.run):
            raise TypeError(f"EvaluateEntry.run must be callable, got {self.run!r}")
        if not self.data:
            raise ValueError("EvaluateEntry.data must name at least one data set")


#: The method-defined commands the core offers (``facelab VERB --method NAME [method options]``): the core names
#: the verbs, each method says what its own options are and what they do (:class:`ActionEntry`).
ACTION_VERBS: Mapping[str, str] = {
    "animate": "animate faces (target expressions, speech, ...) with a trained method",
    "detail": "generate or transfer facial detail (displacement maps, detailed meshes) with a trained method",
    "prepare": "build a method's training-data cache from a user's dataset (resumable, with a report of skipped files)",
}


@dataclass(frozen=True)
class ActionEntry:
    """A method's ``facelab VERB`` command (one of :data:`ACTION_VERBS`): the method owns all of its options.

    Attributes:
        run: ``(options: argparse.Namespace) -> int | None`` (the exit code); ``options`` holds the method's parsed
            options plus ``device`` (the common ``--device``, resolved to ``"cpu"``, ``"cuda"``, ...). User errors
            raise ``ValueError`` / ``FileNotFoundError`` / ``FacelabError`` (printed as one line, exit code 2),
            before anything is written where possible.
        add_arguments: adds the method's options.
        help: one line for ``facelab methods NAME``.
    """

    run: Callable[[argparse.Namespace], int | None]
    add_arguments: ArgumentAdder | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if not callable(self.run):
            raise TypeError(f"ActionEntry.run must be callable, got {self.run!r}")


@dataclass(frozen=True)
class Method:
    """A method as the ``facelab`` commands see it (what its entry point names).

    Attributes:
        name: the ``--method`` name (lower case; the entry point's name).
        description: one line for listings.
        family: the morphable-model family it reconstructs (``flame``, ``bfm``, ``bilinear``, ``ict``).
        reconstruct: ``facelab reconstruct`` support, or None.
        evaluate: ``facelab evaluate`` support, or None.
        benchmarks: ``facelab bench`` name -> :class:`Benchmark` (names share one namespace with the core's).
        configs: name -> ``lightning-cli`` config path (relative to the repository root), for listings.
        actions: verb (one of :data:`ACTION_VERBS`, e.g. ``"animate"``) -> :class:`ActionEntry`.
    """

    name: str
    description: str
    family: str
    reconstruct: ReconstructEntry | None = None
    evaluate: EvaluateEntry | None = None
    benchmarks: Mapping[str, Benchmark] = field(default_factory=dict)
    configs: Mapping[str, str] = field(default_factory=dict)
    actions: Mapping[str, ActionEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"method name {self.name!r}: use lower-case letters, digits, '_' and '-'")
        if not self.family:
            raise ValueError(f"method {self.name!r}: family (the morphable-model family) is empty")
        for name, bench in self.benchmarks.items():
            if not _NAME.match(name) or not isinstance(bench, Benchmark):
                raise ValueError(f"method {self.name!r}: benchmark {name!r} -> {bench!r} is not a "
                                 "lower-case name -> facelab.methods.Benchmark entry")
        for verb, entry in self.actions.items():
            if verb not in ACTION_VERBS or not isinstance(entry, ActionEntry):
                raise ValueError(f"method {self.name!r}: action {verb!r} -> {entry!r} is not one of "
                                 f"{', '.join(ACTION_VERBS)} -> facelab.methods.ActionEntry")

    @property
    def commands(self) -> tuple[str, ...]:
        """The ``facelab`` commands the method supports."""
        return tuple(name for name, entry in (("reconstruct", self.reconstruct), ("evaluate", self.evaluate),
                                              ("bench", self.benchmarks or None)) if entry is not None
                     ) + tuple(verb for verb in ACTION_VERBS if verb in self.actions)


# ------------------------------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------------------------------


def method_entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed methods' entry points by name (metadata only: nothing is imported).

    Raises:
        MethodLoadError: two distributions register one name with different targets.
    """
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        previous = found.get(ep.name)
        if previous is not None and previous.value != ep.value:
            raise MethodLoadError(f"two installed distributions register the method '{ep.name}' "
                                  f"({previous.value} and {ep.value}); uninstall one")
        found[ep.name] = ep
    return dict(sorted(found.items()))


def installed_methods() -> list[str]:
    """Names of the installed methods, sorted (metadata only)."""
    return list(method_entry_points())


def _installed_text(names: list[str]) -> str:
    if not names:
        return (f"no method is installed (none registers a '{ENTRY_POINT_GROUP}' entry point; after adding one, "
                "refresh the install with `pip install --no-deps -e .`)")
    return "installed: " + ", ".join(names)


def get_method(name: str) -> Method:
    """Load the installed method ``name``.

    Raises:
        UnknownMethodError: no installed method of that name (the message lists the installed ones).
        MethodLoadError: its entry point does not import, or does not name a :class:`Method` called ``name``.
    """
    points = method_entry_points()
    if name not in points:
        raise UnknownMethodError(f"--method {name}: unknown method; {_installed_text(list(points))}")
    return _load(points[name])


def _load(ep: metadata.EntryPoint) -> Method:
    try:
        obj = ep.load()
    except Exception as err:  # a broken method package: say which entry point, keep the cause
        raise MethodLoadError(f"method '{ep.name}' ({ep.value}) cannot be loaded: {type(err).__name__}: {err}"
                              ) from err
    if not isinstance(obj, Method):
        raise MethodLoadError(f"method '{ep.name}': the entry point {ep.value} names a {type(obj).__name__}, not a "
                              "facelab.methods.Method")
    if obj.name != ep.name:
        raise MethodLoadError(f"method '{ep.name}': the entry point {ep.value} names the method '{obj.name}'")
    return obj


def load_methods() -> tuple[dict[str, Method], dict[str, str]]:
    """Every installed method that loads, and why the others do not.

    Returns:
        ``(methods, failures)``: name -> :class:`Method`, and name -> error message for the methods that failed
        (one broken package never hides the others).
    """
    methods, failures = {}, {}
    for name, ep in method_entry_points().items():
        try:
            methods[name] = _load(ep)
        except MethodLoadError as err:
            failures[name] = str(err)
    return methods, failures


def default_method(command: str) -> Method:
    """The method a command uses when ``--method`` is not given: the only installed one that supports it.

    Raises:
        UnknownMethodError: none or several installed methods support ``command`` (the message lists them).
    """
    methods, failures = load_methods()
    able = [m for m in methods.values() if command in m.commands]
    if len(able) == 1:
        return able[0]
    if not able:
        broken = "".join(f"\n  {name}: {why}" for name, why in failures.items())
        raise UnknownMethodError(f"no installed method supports `facelab {command}`; "
                                 f"{_installed_text(list(methods))}{broken}")
    raise UnknownMethodError(f"several methods support `facelab {command}`: choose one with --method "
                             f"({', '.join(m.name for m in able)})")


def resolve_method(name: str | None, command: str) -> Method:
    """``--method NAME`` (or the default when None) for ``command``, checked to support it.

    Raises:
        UnknownMethodError: unknown name, or a method without ``command`` support.
    """
    method = default_method(command) if name is None else get_method(name)
    if command not in method.commands:
        able = [n for n, m in load_methods()[0].items() if command in m.commands]
        raise UnknownMethodError(f"--method {method.name}: it has no `facelab {command}` support; methods that "
                                 f"do: {', '.join(able) or 'none'}")
    return method


def parse_method_options(method: Method, command: str, adder: ArgumentAdder | None, argv: list[str]
                         ) -> argparse.Namespace:
    """Parse a method's own options (the command-line words the common parser did not know).

    Raises:
        ValueError: a word that is none of the method's options either, or a bad value (the message lists the
            method's options).
    """
    parser = method_options_parser(method, command, adder)
    try:
        options, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"{err} (an option of {method.name})") from err
    if unknown:
        known = [s for action in parser._actions for s in action.option_strings]
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)} (the options of {method.name} for "
                         f"`facelab {command}`: {', '.join(known) or 'none'})")
    return options


def method_options_parser(method: Method, command: str, adder: ArgumentAdder | None) -> argparse.ArgumentParser:
    """The parser of a method's options for ``command`` (what ``facelab methods NAME`` shows)."""
    parser = argparse.ArgumentParser(prog=f"facelab {command} --method {method.name} ...", add_help=False,
                                     allow_abbrev=False, exit_on_error=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description=f"Options of {method.name} for `facelab {command}`.")
    if adder is not None:
        adder(parser)
    return parser


def describe(method: Method) -> dict[str, Any]:
    """A JSON-able summary of a method (listings)."""
    return {"name": method.name, "description": method.description, "family": method.family,
            "commands": list(method.commands), "benchmarks": {k: b.description for k, b in method.benchmarks.items()},
            "configs": dict(method.configs), "actions": {k: a.help for k, a in method.actions.items()}}
