"""User-facing errors: raised for mistakes a user can fix, printed as one line."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input (config, paths, data); the message names what is wrong."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an impossible value."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (for one-line user errors)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def run_main(main: Callable[[], object]) -> None:
    """Run `main`; a UserError exits with status 2 and a single `error: ...` line on stderr.
    (Here rather than in distcolor.cli so that scripts needing no config, such as
    scripts/wheelhouse.py, import neither pydantic nor yaml.)"""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
