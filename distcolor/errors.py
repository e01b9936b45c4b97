"""User-facing errors: raised for mistakes a user can fix, printed as one line."""

import sys
import threading
import traceback
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input (config, paths, data); the message names what is wrong."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an impossible value."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (for one-line user errors)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def run_main(main: Callable[[], object], disk_full_advice: str | None = None) -> None:
    """Run a script's `main` and end the process the way a user (or a cluster) expects:

    - a UserError: one `error: ...` line, exit status 2;
    - a known failure (disk full, out of memory, a lost peer rank): one `error: ...` line,
      exit status 1; any other exception: its traceback, exit status 1;
    - Ctrl-C outside training: `interrupted`, exit status 130.

    `disk_full_advice` is what the disk-full line tells the user to do (the script knows:
    a training run resumes, a shard build picks up where it stopped).

    A failing rank leaves its line for the other ranks (distcolor.failures.tell_peers), and
    after any failure the process is gone within failures.EXIT_GRACE_S seconds, whatever
    would wait at interpreter exit. (Here rather than in distcolor.cli so that scripts
    needing no config, such as scripts/wheelhouse.py, import neither pydantic nor yaml.)"""
    from distcolor import failures

    threading.excepthook = failures.report_thread_failure
    try:
        main()
        return
    except UserError as err:
        line, code = f"{err}", 2
        print(f"error: {line}", file=sys.stderr)
    except KeyboardInterrupt:
        line, code = "interrupted", 130
        print(line, file=sys.stderr)
    except Exception as err:
        advice = disk_full_advice or failures.DISK_FULL_ADVICE
        line, code = failures.describe(err, advice), 1
        if line is None:
            traceback.print_exc()
            line = f"{type(err).__name__}: {first_line(err)}"
        else:
            print(f"error: {line}", file=sys.stderr)
        if failures.lost_peer(err):
            line = None  # a consequence: the rank that failed first says why
    if line is not None:
        failures.tell_peers(line)
    failures.exit_within(failures.EXIT_GRACE_S, code)
    sys.exit(code)
