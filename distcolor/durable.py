"""Making writes survive a power cut, not just a kill: the one place that calls fsync.

A rename is atomic against a crash of the process, but only durable once the renamed
file's data and the folder holding the new name are on disk."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush `path` (a file, or a folder's entries) to disk; errors propagate."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush `folder`'s entries (new names, renames) where the filesystem allows it: best
    effort, as some filesystems refuse to open or fsync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_stream(stream) -> None:
    """Flush an open file object's buffers and its data to disk."""
    stream.flush()
    os.fsync(stream.fileno())
