"""Paths a user gives, checked before any work: one line naming the option and what is
wrong with the path (missing, a name too long, a path through a file, no permission, a
folder where a file belongs, ...), raised as UserError, never a traceback.

Standard library only, so scripts check their arguments before importing torch.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from distcolor.errors import UserError

NAME_MAX = 255  # bytes per name on Linux, macOS and Windows file systems
SHOWN_NAME = 48  # longer names are shortened in messages (the line stays readable)
CONFIG_MAX_BYTES = 10 * 2**20  # a config is a few KB; more is a wrong file

_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISDIR: "a folder",
}


def shown(path: Path | str) -> str:
    """`path` for a message, with very long names cut (a 300-byte name would fill it)."""
    parts = []
    for part in str(path).split(os.sep):
        size = len(os.fsencode(part))
        parts.append(part if size <= SHOWN_NAME else f"{part[:24]}...({size} bytes)")
    return os.sep.join(parts)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", "a folder", ...)."""
    return next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")


def _too_long(path: Path) -> str | None:
    """Why `path` cannot name anything, if a name in it is over the system's limit."""
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            return f"has a name of {len(os.fsencode(part))} bytes (at most {NAME_MAX})"
    if len(os.fsencode(str(path))) >= getattr(os, "PATH_MAX", 4096):
        return "is too long for this system"
    return None


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder on the way to `path` (what makes it ENOTDIR)."""
    for parent in reversed(path.parents):
        try:
            if not stat.S_ISDIR(os.stat(parent).st_mode):
                return parent
        except OSError:
            return None
    return None


def describe(path: Path, err: OSError) -> str:
    """What an OSError on `path` means, in a few words after the path."""
    code = err.errno
    if code == errno.ENOENT:
        return "does not exist"
    if code == errno.ENOTDIR:
        blocker = _blocking_file(path)
        where = f"{shown(blocker)} is a file, not a folder" if blocker else "a part is a file"
        return f"cannot be reached: {where}"
    if code == errno.ENAMETOOLONG:
        return _too_long(path) or "is too long for this system"
    if code in (errno.EACCES, errno.EPERM):
        return "cannot be accessed: permission denied"
    if code == errno.ELOOP:
        return "cannot be reached: too many symbolic links (a loop?)"
    return f"cannot be used: {err.strerror or err}"


def checked_stat(path: Path, label: str, noun: str = "") -> os.stat_result:
    """os.stat, or UserError "<label> <path> <problem>" (label: "--out:", "input", ...);
    `noun` names what is missing ("folder nowhere does not exist")."""
    long = _too_long(path)
    if long:
        raise UserError(f"{label} {shown(path)} {long}")
    try:
        return os.stat(path)
    except FileNotFoundError:
        what = f"{noun} {shown(path)}" if noun else shown(path)
        raise UserError(f"{label} {what} does not exist") from None
    except OSError as err:
        raise UserError(f"{label} {shown(path)} {describe(path, err)}") from None
    except ValueError:  # an embedded NUL byte
        raise UserError(f"{label} {shown(path)!r} is not a valid path") from None


def existing_path(path: Path | str, option: str) -> Path:
    """A file or folder that exists and can be read (a checkpoint, an input)."""
    path = Path(path)
    mode = checked_stat(path, f"{option}:").st_mode
    if stat.S_ISDIR(mode):
        return input_folder(path, option)
    if not stat.S_ISREG(mode):
        raise UserError(f"{option}: {shown(path)} is {kind_of(mode)}, not a file or folder")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option}: {shown(path)} cannot be read: permission denied")
    return path


def input_file(path: Path | str, option: str) -> Path:
    """A regular file that exists and can be read (a FIFO would block the reader)."""
    path = Path(path)
    mode = checked_stat(path, f"{option}:").st_mode
    if not stat.S_ISREG(mode):
        raise UserError(f"{option}: {shown(path)} is {kind_of(mode)}, not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option}: {shown(path)} cannot be read: permission denied")
    return path


def input_folder(path: Path | str, option: str) -> Path:
    """A folder that exists and can be listed."""
    path = Path(path)
    mode = checked_stat(path, f"{option}:", "folder").st_mode
    if not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else kind_of(mode)
        raise UserError(f"{option}: {shown(path)} is {what}, not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"{option}: {shown(path)} cannot be read: permission denied")
    return path


def output_folder(path: Path | str, option: str) -> Path:
    """A folder that exists and can be written, or can be created (it is not created here:
    a run refused later must leave nothing behind)."""
    path = Path(path)
    long = _too_long(path)
    if long:
        raise UserError(f"{option}: {shown(path)} {long}")
    missing = path
    while True:
        try:
            mode = os.stat(missing).st_mode
            break
        except FileNotFoundError:
            if missing.parent == missing:
                raise UserError(f"{option}: {shown(path)} cannot be created") from None
            missing = missing.parent
        except NotADirectoryError:
            blocker = _blocking_file(missing) or missing.parent
            raise UserError(
                f"{option}: {shown(path)} cannot be created: {shown(blocker)} is a file, "
                "not a folder"
            ) from None
        except OSError as err:
            raise UserError(f"{option}: {shown(path)} {describe(missing, err)}") from None
        except ValueError:
            raise UserError(f"{option}: {shown(path)!r} is not a valid path") from None
    if not stat.S_ISDIR(mode):
        if missing == path:
            what = "a file" if stat.S_ISREG(mode) else kind_of(mode)
            raise UserError(f"{option}: {shown(path)} is {what}, not a folder")
        raise UserError(
            f"{option}: {shown(path)} cannot be created: {shown(missing)} is a file, not a folder"
        )
    if not os.access(missing, os.W_OK | os.X_OK):
        verb = "cannot be written" if missing == path else f"cannot be created in {missing}"
        reason = "read-only file system" if _read_only(missing) else "permission denied"
        raise UserError(f"{option}: {shown(path)} {verb}: {reason}")
    return path


def make_folder(path: Path | str, option: str) -> Path:
    """`output_folder`, created (with its parents)."""
    path = output_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{option}: cannot create {shown(path)}: {err.strerror or err}") from None
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def read_text_file(path: Path | str, what: str, *, max_bytes: int = CONFIG_MAX_BYTES) -> str:
    """The text of a small UTF-8 file (a config), or UserError: missing, a folder, a device,
    unreadable, too large, binary or not UTF-8."""
    path = Path(path)
    mode = checked_stat(path, f"{what}:").st_mode
    if not stat.S_ISREG(mode):
        raise UserError(f"{what}: {shown(path)} is {kind_of(mode)}, not a file")
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as err:
        raise UserError(f"{what}: {shown(path)} {describe(path, err)}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what}: {shown(path)} is over {max_bytes // 2**20} MB, not a config")
    if b"\0" in data:
        raise UserError(f"{what}: {shown(path)} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{what}: {shown(path)} is not UTF-8 text (byte {err.start} is invalid)"
        ) from None
