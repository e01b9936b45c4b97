"""Have-lists: what the target already holds (its `pip list --format=freeze`, `pip freeze`,
`pip list`'s columns, or plain names), read into {canonical name: version or None}."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from packaging.utils import canonicalize_name

from distcolor.errors import UserError
from distcolor.paths import kind_of


def parse_have(text: str, source: str = "have-list") -> dict[str, str | None]:
    """`pip list --format=freeze` (or `pip freeze`) output, plain names one a line, or
    `pip list`'s two columns -> {canonical name: version or None}."""
    have: dict[str, str | None] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or set(line) <= set("- "):
            continue
        name, version = _have_line(line)
        if name is None:
            raise UserError(
                f"{source}:{number}: cannot read {raw.strip()!r} as a package "
                "(name==version or a name)"
            )
        if name.lower() == "package" and version and version.lower() == "version":
            continue  # `pip list`'s header
        have[canonicalize_name(name)] = version
    return have


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"


def _have_line(line: str) -> tuple[str | None, str | None]:
    if line.startswith(("-e ", "--editable ")):  # `pip freeze` of an editable install
        m = re.search(r"[#&]egg=(" + _NAME + ")", line)
        return (m[1], None) if m else (None, None)
    if m := re.fullmatch(rf"({_NAME})\s*===?\s*(\S+)", line):
        return m[1], m[2]
    if m := re.fullmatch(rf"({_NAME})\s*@\s*\S+", line):  # name @ file:///... (direct URL)
        return m[1], None
    # A name alone, or `pip list`'s columns: name version [location].
    if m := re.fullmatch(rf"({_NAME})(?:\s+(\S+))?(?:\s+\S+)?", line):
        return m[1], m[2]
    return None, None


def read_have(path: Path) -> dict[str, str | None]:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # a FIFO would block the read
            raise UserError(f"cannot read the have-list {path}: it is {kind_of(mode)}")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise UserError(f"cannot read the have-list {path}: {reason}") from None
    return parse_have(text, str(path))
