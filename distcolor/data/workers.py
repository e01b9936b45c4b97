"""Loader worker processes: safe to start from a threaded trainer, and never outliving it.

Workers fork from a fork server, so their parent is that server, not the trainer: torch's
own parent-death check (it compares the parent pid) never fires, and a trainer that died
(kill -9, a crash) used to leave its workers, the fork server and the resource tracker
alive for good. So each worker watches the real trainer:

- the trainer's death ends it at once (a pidfd on the trainer, woken by the kernel; a
  one-second poll where pidfds do not exist), and with the last worker gone the fork
  server and the resource tracker see their pipes close and exit too;
- SIGINT and SIGTERM sent to the whole process group (Ctrl-C in a terminal, SLURM, a
  cluster's `kill -TERM -PGID`) do not touch it: the trainer finishes its step and
  checkpoints, which needs the worker's next batch;
- SIGTERM from the trainer itself (multiprocessing stopping its workers at exit) ends it,
  so a trainer leaving on an exception is not held up joining workers that ignore it.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import select
import signal
import sys
import threading
import time

# Imported once by the fork server, so each worker starts with them loaded. One list for
# every caller: the server starts once per process and ignores later preload changes.
# forkserver_signals comes first: it protects the server from group signals while it loads.
PRELOAD = [
    "distcolor.data.forkserver_signals",
    "distcolor.data.loader",
    "distcolor.data.shard_build",
]

_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


@functools.cache
def process_context() -> multiprocessing.context.BaseContext:
    """Start method for worker processes: forkserver, never plain fork.

    A trainer runs threads (gloo's, TensorBoard's writer, the progress bar); a fork()
    copies whatever lock one of them holds and the child can hang before it runs a line
    (seen here: a 2-rank run froze creating its eval loader). The fork server is a fresh
    process that imports PRELOAD once; workers fork from it, so they start fast."""
    # The resource tracker (started with the first worker) unlinks the semaphores of a
    # process that left without cleaning up (a second Ctrl-C, the exit watchdog) and then
    # warns about "leaked semaphore objects": noise after a deliberate exit. It takes its
    # warning filters from sys.warnoptions when it starts, so the cleanup stays, the
    # warning goes.
    if _QUIET_TRACKER not in sys.warnoptions:
        sys.warnoptions.append(_QUIET_TRACKER)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def worker_init(trainer_pid: int) -> functools.partial:
    """The loader's `worker_init_fn`, bound to the trainer's pid (call in the trainer)."""
    return functools.partial(guard_worker, trainer_pid)


def guard_worker(trainer_pid: int, _worker_id: int | None = None) -> None:
    """Runs first in each worker: see the module docstring."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):
        # Blocked before any other thread exists, so every thread inherits the mask and
        # the waiter below is the only one that receives SIGTERM (pending, not discarded:
        # the disposition is the default again, not the fork server's "ignore").
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _daemon(_exit_on_sigterm_from, trainer_pid)
    else:  # no way to tell who sent it: leave SIGTERM to the trainer
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _daemon(_exit_when_gone, trainer_pid)


def _daemon(target, *args) -> None:
    threading.Thread(target=target, args=args, name=target.__name__, daemon=True).start()


def _exit_on_sigterm_from(trainer_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == trainer_pid:
            os._exit(128 + signal.SIGTERM)


def _exit_when_gone(trainer_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(trainer_pid)
    except ProcessLookupError:  # gone already
        os._exit(1)
    except (AttributeError, OSError):  # no pidfds (old kernel, not Linux): poll
        while _alive(trainer_pid):
            time.sleep(1.0)
        os._exit(1)
    select.select([pidfd], [], [])  # readable once the trainer has exited
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # owned by someone else: the trainer's pid was reused
        return False
    return True
