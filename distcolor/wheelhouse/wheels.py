"""Wheels: the Wheel record the walk keeps, what a wheel file says (its METADATA, whether it
is pure, the one-version rule over a folder), version checks, and the contract of a fetch
step (Fetch, NoWheel)."""

from __future__ import annotations

import email.parser
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from distcolor.errors import UserError

# fetch(spec, dest) -> the wheel's path in dest. spec is "name==1.2" or "name>=1" (no extras,
# no markers). Raises NoWheel when the index has no wheel for the target, UserError otherwise.
Fetch = Callable[[str, Path], Path]


class NoWheel(UserError):
    """The index holds no wheel of this requirement for the target (maybe an sdist only)."""


def satisfies(specifier: SpecifierSet, version: str) -> bool:
    """Whether `version` meets `specifier`, pre-releases included; a version that is not
    PEP 440 (an old legacy one) is not judged."""
    try:
        return specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True


@dataclass
class Wheel:
    name: str  # canonical
    version: str
    path: Path
    requires: list[str]
    needed_by: str
    how: str = "index"  # index | pinned | built here | this project
    extras: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) read from a wheel's .dist-info/METADATA."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if not names:
                raise UserError(f"{path.name} holds no .dist-info/METADATA: not a wheel")
            if len(names) > 1:
                name = parse_wheel_filename(path.name)[0]
                names = [n for n in names if canonicalize_name(n.split("-")[0]) == name] or names
            text = archive.read(names[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile, InvalidWheelFilename, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the wheel {path.name}: {err}") from None
    message = email.parser.Parser().parsestr(text, headersonly=True)
    if not message["Name"] or not message["Version"]:
        raise UserError(f"{path.name}: its METADATA lacks Name or Version")
    return message["Name"], message["Version"], list(message.get_all("Requires-Dist") or [])


def is_pure(path: Path) -> bool:
    """Whether a wheel installs on any Python 3 and platform (py3-none-any and the like)."""
    tags = parse_wheel_filename(path.name)[3]
    return any(
        t.abi == "none" and t.platform == "any" and t.interpreter.startswith("py") for t in tags
    )


def one_version(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """{name: wheels} for the names held in more than one version (the one-version rule)."""
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(parse_wheel_filename(path.name)[0], []).append(path)
    return {name: sorted(ps) for name, ps in by_name.items() if len(ps) > 1}
