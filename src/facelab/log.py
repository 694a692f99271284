"""facelab's console logging, and the one way to say that a pretrained network is missing.

Every module logs through ``logging.getLogger(__name__)`` (names under ``facelab.`` or a method package). The
``facelab`` logger and each method package's logger get one console handler (stderr, WARNING and above) the first
time :func:`get_logger` or :func:`warn_missing_weights` runs, so a user running ``lightning-cli fit`` sees the
warning on the console whatever Lightning or the root logger are configured to do. ``FACELAB_LOG_LEVEL`` (e.g.
``INFO``) lowers the console threshold.

Tests read the console handler's stream (:func:`console_handler`), not ``caplog``.
"""

from __future__ import annotations

import logging
import os
import sys

CONSOLE_FORMAT = "[facelab] %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "facelab-console"


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is *now* (pytest's capture swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; we always follow sys.stderr
        pass


def console_handler(top: str = "facelab") -> logging.Handler:
    """The console handler on logger ``top`` (added once; WARNING unless ``FACELAB_LOG_LEVEL`` says otherwise)."""
    logger = logging.getLogger(top)
    for handler in logger.handlers:
        if handler.get_name() == _HANDLER_NAME:
            return handler
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    level = os.environ.get("FACELAB_LOG_LEVEL", "WARNING").upper()
    handler.setLevel(level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > handler.level:
        logger.setLevel(handler.level)
    logger.propagate = False  # one line on the console, not a second copy through the root logger
    return handler


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a console handler on its top-level package (``facelab``, ``smirk``, ...)."""
    console_handler(name.split(".")[0])
    return logging.getLogger(name)


def warn_missing_weights(config_key: str, what: str, consequence: str, logger: str = "facelab") -> str:
    """Say loudly (WARNING on the console) that a pretrained network has no weights.

    Args:
        config_key: the config key that holds the weights path, e.g. ``model.init_args.vgg_weights``.
        what: the network, e.g. ``"VGG16 (perceptual loss)"``.
        consequence: what the run loses, e.g. ``"the perceptual loss (weight 10) is switched off"``.
        logger: the logger name to emit on (a method package's logger, e.g. ``"smirk.module"``).

    Returns:
        The message (for hyper-parameter logs or an exception).
    """
    message = (f"no pretrained weights for {what}: set `{config_key}` to a local weights file. "
               f"Without it {consequence}.")
    get_logger(logger).warning(message)
    return message
