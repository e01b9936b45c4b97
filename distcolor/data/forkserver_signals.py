"""Imported first by the loader's fork server (workers.PRELOAD), before anything slow.

The fork server is started by the trainer and shares its process group, so a Ctrl-C or a
group SIGTERM reaches it too, and while it imports the loader it would die of it (with a
traceback). Ignoring both here protects it from its first moments; the workers it forks
inherit the dispositions, so they are protected from birth until `workers.guard_worker`
takes over. Importing this anywhere but in the fork server does nothing."""

import signal
import sys


def _in_fork_server() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return frame.f_code.co_name == "main"
        frame = frame.f_back
    return False


if _in_fork_server():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
