"""One writer per folder: a run folder (scripts/train.py) or a shard folder (make_shards).

The lock is an exclusive `flock` on a hidden file *beside* the folder, `.<name>.lock` in
its parent, not inside it: make_shards publishes a new shard set by swapping whole
folders (distcolor/data/publish.py), and a lock inside would move away with the old
folder; beside it, it also exists before the folder does.

- A second writer is refused at once with one line naming the holder: pid, host, command
  and start time, read from the lock file, where the holder writes them. (A trainer
  about to build its synthetic data waits instead: the holder may be building the same.)
- The kernel drops a flock when its holder dies, kill -9 included, so a lock left by a
  dead process is simply taken over (its file still holds the old details; they are
  overwritten). Workers are started through a fork server or spawn and never inherit it.
- Released locks remove their file, and parent folders made only for it, so a refused
  or finished command leaves nothing behind. The file is removed while still locked and
  whoever locks a file checks that it is still the one at the path, so removing it never
  lets two writers in.
- On NFS, Linux maps flock to NFS byte-range locks, which hold across nodes; a node that
  dies holds its locks until the server's lease ends (NFSv4: about 90 s). Where the file
  system has no locks at all, the command warns and goes on unprotected.
- In a multi-process run only the main process (rank 0) takes the run lock: it alone
  writes the run folder's files, and the other ranks may be on other nodes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from distcolor.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unprotected, with a warning
    fcntl = None

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_LONGEST_NAME = 200  # bytes of a folder name that still leave room for ".<name>.partial"
_COMMAND_SHOWN = 160  # characters of the holder's command line in a message
# Rank variables of the launchers Accelerate supports (torchrun, accelerate launch,
# deepspeed, MPI); none set means a single process.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")


def hidden_sibling(folder: Path, role: str) -> Path:
    """`.<name>.<role>` beside `folder` (the lock; make_shards' staging folders). A name
    too long for that is replaced by its digest: a name is at most 255 bytes."""
    name = folder.name
    if len(os.fsencode(name)) > _LONGEST_NAME:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return folder.with_name(f".{name}.{role}")


def lock_path(folder: Path | str) -> Path:
    """The lock file of `folder`: `.<name>.lock` beside it (links resolved, so every
    path to one folder shares one lock)."""
    return hidden_sibling(Path(os.path.realpath(folder)), "lock")


def _holder_record(purpose: str) -> dict:
    return {
        "purpose": purpose,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _describe(fd: int) -> str:
    """Who holds the lock on `fd`, in words, from the details the holder wrote."""
    try:
        holder = json.loads(os.pread(fd, 65536, 0))
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not written yet)"
    command = str(holder.get("command", "?"))
    if len(command) > _COMMAND_SHOWN:
        command = command[: _COMMAND_SHOWN - 3] + "..."
    where = f"pid {pid} on {host}"
    if host == socket.gethostname() and not _alive(pid):
        # Only a process it started can still hold the lock (such as a leftover worker).
        where += " (exited; a process it started still holds the lock)"
    purpose = holder.get("purpose", "another process")
    return f"{purpose}, {where}, started {holder.get('since', '?')}: {command}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; the ones created, deepest first."""
    made = []
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        made.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return made


@contextmanager
def folder_lock(
    folder: Path | str,
    *,
    name: str,
    purpose: str,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[None]:
    """Hold `folder`'s lock for the block. `name` names the folder in messages
    ("--out shards/x"); `purpose` says what the holder does ("a shard build"). Taken by
    another process: a one-line UserError, or with `wait`, wait for it (`on_wait` gets
    the holder's description first)."""
    path = lock_path(folder)
    try:
        made = _make_parents(path.parent)
    except OSError as err:
        raise UserError(f"{name}: cannot create {path.parent}: {err.strerror or err}") from None
    fd = None
    try:
        if fcntl is not None:
            fd = _acquire(path, name=name, purpose=purpose, wait=wait, on_wait=on_wait)
        if fd is None:
            log(f"warning: {name}: no file locks here; nothing stops a second writer")
        yield
    finally:
        if fd is not None:
            _release(path, fd)
        for parent in made:  # folders made only to hold the lock file, if still empty
            try:
                parent.rmdir()
            except OSError:
                break


def _acquire(path: Path, *, name: str, purpose: str, wait: bool, on_wait) -> int | None:
    """The locked file's descriptor (details written), or None where locks are unsupported."""
    while True:
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # its folder was made by a holder that just left
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise UserError(f"{name}: cannot create {path}: {err.strerror or err}") from None
        try:
            if not _try_lock(fd):
                holder = _describe(fd)
                if not wait:
                    raise UserError(
                        f"{name} is in use by {holder}; one writer at a time: wait for it to "
                        "end or stop it"
                    )
                if on_wait is not None:
                    on_wait(holder)
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)  # until the holder lets go, or dies
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_LOCKS:
                return None
            raise UserError(f"{name}: cannot lock {path}: {err.strerror or err}") from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us removed the file as it let go: lock the file at the path.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            try:  # details for the message of whoever is refused; the lock holds without
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(_holder_record(purpose)).encode(), 0)
            except OSError:
                pass
            return fd
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _release(path: Path, fd: int) -> None:
    # Removed while still locked: a process that opened it meanwhile sees the file is
    # gone from the path once it gets the lock, and starts again.
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def is_main_process() -> bool:
    """Whether this is the launch's main process (rank 0, or the only process), read
    from the launcher's variables, so it is known before any process group exists."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value) == 0
    return True


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    """The run folder's lock on the main process (the other ranks take none)."""
    if not is_main_process():
        yield
        return
    with folder_lock(run_dir, name=f"run folder {run_dir}", purpose="a training run"):
        yield
