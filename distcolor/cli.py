"""Shared entry-point plumbing for scripts/*.py: user errors become one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from distcolor.errors import UserError


def run_main(main: Callable[[], object]) -> None:
    """Run `main`; a UserError exits with status 2 and a single `error: ...` line on stderr."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
