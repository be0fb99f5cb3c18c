"""The one error type users see, and the wrapper that turns it into a clean exit for stages."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ShrinkflowError(Exception):
    """A problem with the user's input (params, paths, data) that is theirs to fix.

    Stage scripts print it as one readable message and exit non-zero, without a traceback.
    """


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``, reporting ShrinkflowError as ``error: ...`` with exit code 2."""
    try:
        main()
    except ShrinkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
