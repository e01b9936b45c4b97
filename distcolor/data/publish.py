"""Putting a finished folder in place of an old one, so that a kill at any instant leaves
a complete folder at the final path: the old one until the new one is complete.

A build works in `.<name>.partial` beside the final folder `out` (same parent, so the
same file system and every move is a rename), and publishes when that folder is
complete (for shards: its manifest written last):

- no `out` yet: one rename;
- on Linux, one `renameat2(RENAME_EXCHANGE)` swaps the two folders in a single atomic
  step; the old folder, now at the staging path, is renamed to `.<name>.trash` and
  deleted;
- where the exchange is missing (not Linux, or a file system without it such as NFS;
  also with DISTCOLOR_NO_RENAME_EXCHANGE=1): `out` is renamed to `.<name>.old`, the new
  folder to `out`, and the old one to the trash. Between the first two renames `out` is
  missing for an instant; `recover` (run by the next build, and by a trainer that finds
  no folder) then puts a complete folder back: the new one if the staging folder is
  complete, else the old one.

Invariants a kill cannot break: `out` is complete (or missing, with `.old` complete and
`out` recoverable); `.partial` is a build to resume or discard, never the only copy of
a complete set; `.trash` is always safe to delete. Callers hold the folder's writer
lock (distcolor/locks.py) around `publish` and `recover`.

Tests pause here with DISTCOLOR_TEST_PAUSE_AT (distcolor/pause_points.py) to kill the
process at a named point of the publish.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from distcolor.durable import fsync_folder
from distcolor.locks import hidden_sibling
from distcolor.pause_points import pause_point

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def sibling(out: Path, role: str) -> Path:
    """`.<name>.<role>` beside `out`: partial (the build), old, trash."""
    return hidden_sibling(out, role)


def staging_path(out: Path) -> Path:
    return sibling(out, "partial")


def publish(staging: Path, out: Path) -> None:
    """Replace `out` (if any) by the complete folder `staging`; see the module notes."""
    fsync_folder(staging)
    pause_point("publish")
    trash = sibling(out, "trash")
    if not out.exists():
        os.rename(staging, out)
    elif _exchange(staging, out):
        pause_point("publish-exchanged")
        os.rename(staging, trash)
    else:
        old = sibling(out, "old")
        os.rename(out, old)
        pause_point("publish-gap")
        os.rename(staging, out)
        os.rename(old, trash)
    fsync_folder(out.parent)
    pause_point("publish-trash")
    shutil.rmtree(trash, ignore_errors=True)


def recover(out: Path, is_complete: Callable[[Path], bool]) -> None:
    """Finish what a killed `publish` left: a folder back at `out`, and leftovers deleted.
    `is_complete(folder)` tells a finished build from an unfinished one."""
    old, staging, trash = (sibling(out, role) for role in ("old", "partial", "trash"))
    if old.exists() and not out.exists():
        # Killed between the two renames of the fallback: the new set if it is complete.
        os.rename(staging if is_complete(staging) else old, out)
    if old.exists():
        os.rename(old, trash)
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)


def needs_recovery(out: Path) -> bool:
    return sibling(out, "old").exists() or sibling(out, "trash").exists()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where this system or file system cannot."""
    if sys.platform != "linux" or os.environ.get("DISTCOLOR_NO_RENAME_EXCHANGE"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))
