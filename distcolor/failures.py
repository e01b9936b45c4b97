"""How a run fails: one line for the failures we know, word to the other ranks, a bounded exit.

- `describe(err)` turns a known kind of failure (disk full, out of memory, a lost or silent
  peer rank) into one line; anything else keeps its traceback (a bug to report).
- `tell_peers(line)` leaves the failing rank's line in the run's rendezvous store, so the
  ranks that then lose contact with it can say which rank failed first, and why.
- `exit_within(seconds, code)` makes sure the process is gone `seconds` after an error even
  if something at interpreter exit would wait forever (a thread, a child to join).

No torch import at module level: `run_main` uses this from every script.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import re
import shutil
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

# After an error is reported, the process ends within this many seconds whatever happens.
EXIT_GRACE_S = float(os.environ.get("DISTCOLOR_EXIT_GRACE_S", "30"))

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory")
_PEER_TEXT = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "nccl communicator was aborted",
    "nccl error",
    "socket timeout",
)
# gloo's words when its own timeout ends a collective (no "gloo" in them, a RuntimeError).
_GLOO_TIMEOUT_TEXT = ("application timeout caused pair closure",)
_TIMEOUT_TEXT = ("timed out", "timeout")
_NOTICE = "distcolor/failed/{rank}"
_WAITED = "distcolor/timed-out/{rank}"
# How long a rank whose collective timed out waits for the others to say they timed out
# too: the ranks that do not are the silent ones. They all waited on the same collective,
# so their timeouts end within moments of each other.
_ROLL_CALL_S = 3.0


# What a user can do about a full disk, by default (a script may say it for itself).
DISK_FULL_ADVICE = "free some space (or write elsewhere), then run it again"


def describe(err: BaseException, disk_full_advice: str = DISK_FULL_ADVICE) -> str | None:
    """One line for a known kind of failure anywhere in `err`'s chain, else None."""
    chain = list(_chain(err))
    kinds = (functools.partial(_disk_full, advice=disk_full_advice), _out_of_memory, _lost_peer)
    for kind in kinds:
        for e in chain:
            line = kind(e)
            if line is not None:
                return line
    return None


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _first_line(err: BaseException) -> str:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    # gloo's: "[/path/to/pair.cc:553] Connection closed by peer [addr]:port. This is ..."
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line).split(". This is typically")[0]
    return line if len(line) <= 240 else line[:237] + "..."


def _disk_full(err: BaseException, advice: str) -> str | None:
    if not (isinstance(err, OSError) and err.errno in _DISK_FULL):
        return None
    where = Path(err.filename) if err.filename else None
    free = f" ({megabytes(free_bytes(where))} free there)" if where is not None else ""
    target = f"could not write {where}{free}" if where is not None else _first_line(err)
    return f"disk full: {target}; {advice}"


def disk_full_message(directory: Path, what: str, needed: int) -> str:
    """The line for a write of about `needed` bytes into `directory` that ran out of space."""
    return (
        f"disk full: {what} needs about {megabytes(needed)} in {directory}, "
        f"{megabytes(free_bytes(directory))} free; free some space (or point run.out_dir "
        "elsewhere), then continue with --resume"
    )


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _out_of_memory(err: BaseException) -> str | None:
    text = str(err).lower()
    if not (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or (isinstance(err, RuntimeError) and any(t in text for t in _OOM_TEXT))
    ):
        return None
    return (
        f"out of memory ({_first_line(err)}); lower data.batch_size, data.image_size or the "
        "model widths, or train with train.mixed_precision=bf16"
    )


def lost_peer(err: BaseException) -> bool:
    """Whether `err` (or its chain) is this rank losing another one: a consequence, not
    the run's first failure."""
    return any(_peer_trouble(e) is not None for e in _chain(err))


def _peer_trouble(err: BaseException) -> str | None:
    name, text = type(err).__name__, str(err).lower()
    distributed = name in ("DistBackendError", "DistNetworkError", "DistStoreError")
    if not (isinstance(err, (RuntimeError, ConnectionError)) or distributed):
        return None
    if any(t in text for t in _PEER_TEXT):
        return "lost"
    if any(t in text for t in _GLOO_TIMEOUT_TEXT):
        return "silent"
    if any(t in text for t in _TIMEOUT_TEXT) and ("gloo" in text or distributed):
        return "silent"
    return None


def _lost_peer(err: BaseException) -> str | None:
    trouble = _peer_trouble(err)
    if trouble is None:
        return None
    first = _failed_first()
    if first is not None:
        rank, line = first
        return f"rank {rank} failed first ({line}); this rank lost contact with it"
    if trouble == "silent":
        silent = _silent_ranks()
        who = (
            f"rank {silent[0]}" if silent and len(silent) == 1
            else f"ranks {', '.join(map(str, silent))}" if silent
            else "another rank"
        )  # fmt: skip
        return (
            f"a collective timed out: {who} stopped answering for longer than "
            f"train.collective_timeout_s (hung, or far slower than the rest; see its log): "
            f"{_first_line(err)}"
        )
    return (
        "lost contact with another rank of the run, which reported no error (killed by the "
        "out-of-memory killer, a node failure or kill -9? see the launcher's log): "
        f"{_first_line(err)}"
    )


def _store():
    """A client of the run's rendezvous store (torchrun's or rank 0's), or None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    if "torch.distributed" not in sys.modules:
        return None
    import torch.distributed as dist

    try:
        return dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=3),
            wait_for_workers=False,
        )
    except Exception:  # the store went with the rank that hosted it
        return None


def tell_peers(line: str) -> None:
    """On a failing rank of a multi-process run: leave `line` for the others to name."""
    store = _store()
    if store is None:
        return
    try:
        store.set(_NOTICE.format(rank=os.environ.get("RANK", "?")), line)
    except Exception:
        pass


def _failed_first() -> tuple[int, str] | None:
    store = _store()
    if store is None:
        return None
    mine = os.environ.get("RANK")
    for rank in range(int(os.environ.get("WORLD_SIZE", "1"))):
        key = _NOTICE.format(rank=rank)
        try:
            if str(rank) != mine and store.check([key]):
                return rank, store.get(key).decode(errors="replace")
        except Exception:
            return None
    return None


def _silent_ranks() -> list[int] | None:
    """After a collective timed out here: the other ranks that did not time out too (nor
    report an error) within a short roll call, or None without a store."""
    store = _store()
    if store is None:
        return None
    mine, world = os.environ.get("RANK", "?"), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        store.set(_WAITED.format(rank=mine), "1")
        deadline = time.monotonic() + _ROLL_CALL_S
        while True:
            silent = [
                rank
                for rank in range(world)
                if str(rank) != mine
                and not store.check([_WAITED.format(rank=rank)])
                and not store.check([_NOTICE.format(rank=rank)])
            ]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.2)
    except Exception:
        return None


_exit_plan: dict[str, float] = {}  # the latest exit_within's seconds and code


def exit_within(seconds: float, code: int) -> None:
    """End the process with `code` if it is still shutting down `seconds` after it began to.

    The clock starts when the interpreter begins to exit (threading's exit hooks run
    before it joins threads and before atexit handlers, where a hang would be), not now:
    a caller that catches the SystemExit and keeps running (a test calling a script's
    main in its own process) is not cut short later. One watchdog per process."""
    first = not _exit_plan
    _exit_plan.update(seconds=seconds, code=code)
    if not first:
        return
    exiting = threading.Event()

    def _force() -> None:
        exiting.wait()
        time.sleep(_exit_plan["seconds"])
        line = f"error: still running {_exit_plan['seconds']:.0f} s after the error; ending now\n"
        os.write(2, line.encode())
        os._exit(int(_exit_plan["code"]))

    # Started now: a thread may not start once the interpreter is finalizing.
    threading.Thread(target=_force, name="exit-within", daemon=True).start()
    # threading._register_atexit (as concurrent.futures uses) runs before threads are joined.
    register = getattr(threading, "_register_atexit", None) or atexit.register
    register(exiting.set)


def report_thread_failure(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: a known failure in a background thread (TensorBoard's writer
    on a full disk) as one line; the main thread reports it again when it next writes."""
    line = describe(args.exc_value) if args.exc_value is not None else None
    if line is None:
        threading.__excepthook__(args)
        return
    name = args.thread.name if args.thread is not None else "a thread"
    print(f"warning: {name}: {line}", file=sys.stderr)
