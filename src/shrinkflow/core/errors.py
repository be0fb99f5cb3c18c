"""The one error type users see, and the wrapper that turns it into a clean exit for stages."""

from __future__ import annotations

import reprlib
import sys
from collections.abc import Callable
from typing import Any

MAX_ECHO = 200  # characters of a user's value echoed in an error line

_short = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_short.maxlevel, _short.maxlist, _short.maxdict = 3, 8, 8
_short.maxstring = _short.maxother = _short.maxlong = MAX_ECHO


class ShrinkflowError(Exception):
    """A problem with the user's input (params, paths, data) that is theirs to fix.

    Stage scripts print it as one readable message and exit non-zero, without a traceback.
    """


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: an error line stays one
    short line whatever the user's value (a YAML alias expansion made one megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def echo(value: Any) -> str:
    """``repr(value)`` for an error line, bounded before it is built: ``reprlib`` stops at a few
    items and levels, so a value of nested aliases (which ``repr`` would expand to gigabytes)
    costs nothing; then at most ``MAX_ECHO`` characters."""
    return clip(_short.repr(value))


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``, reporting ShrinkflowError as ``error: ...`` with exit code 2."""
    try:
        main()
    except ShrinkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
