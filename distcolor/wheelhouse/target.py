"""The target machine: its Python version and platform tags, parsed and checked, and the
PEP 508 environment markers as they read there (never as they read on this machine)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.markers import Marker

from distcolor.errors import UserError

DEFAULT_PYTHON = "3.12"
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"

LINUX_ARCHES = ("x86_64", "aarch64", "i686", "ppc64le", "s390x", "armv7l", "riscv64")
MAC_ARCHES = ("x86_64", "arm64", "universal2")
WINDOWS = {"win_amd64": "AMD64", "win32": "x86", "win_arm64": "ARM64"}
# The legacy manylinux names and the glibc they stand for (PEP 600).
LEGACY_MANYLINUX = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
PLATFORM_EXAMPLES = (
    "manylinux_2_28_x86_64, manylinux2014_aarch64, musllinux_1_2_x86_64, macosx_11_0_arm64, "
    "win_amd64"
)


@dataclass(frozen=True)
class Platform:
    """One platform tag read: its OS (sys.platform's value) and machine, and the tags pip is
    given for it (pip matches manylinux_2_N exactly, so every older glibc is named too)."""

    tag: str
    sys_platform: str  # linux, darwin, win32
    machine: str  # platform.machine() there: x86_64, aarch64, arm64, AMD64
    pip_tags: tuple[str, ...]


def parse_platform(tag: str) -> Platform:
    """A wheel platform tag (manylinux_2_28_x86_64, ...) -> Platform; UserError if unknown."""
    if m := re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag):
        glibc, arch = int(m[1]), m[2]
    elif m := re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag):
        glibc, arch = LEGACY_MANYLINUX[m[1]], m[2]
    elif m := re.fullmatch(r"musllinux_1_(\d+)_(\w+)", tag):
        if m[2] not in LINUX_ARCHES:
            raise _unknown_platform(tag)
        tags = tuple(f"musllinux_1_{n}_{m[2]}" for n in range(int(m[1]), -1, -1))
        return Platform(tag, "linux", m[2], tags)
    elif m := re.fullmatch(r"macosx_(\d+)_(\d+)_(\w+)", tag):
        if m[3] not in MAC_ARCHES:
            raise _unknown_platform(tag)
        machine = "arm64" if m[3] == "universal2" else m[3]
        return Platform(tag, "darwin", machine, (tag,))
    elif tag in WINDOWS:
        return Platform(tag, "win32", WINDOWS[tag], (tag,))
    elif m := re.fullmatch(r"linux_(\w+)", tag):
        if m[1] not in LINUX_ARCHES:
            raise _unknown_platform(tag)
        return Platform(tag, "linux", m[1], (tag,))
    else:
        raise _unknown_platform(tag)
    if arch not in LINUX_ARCHES or not 5 <= glibc <= 99:
        raise _unknown_platform(tag)
    tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 4, -1)]
    for legacy, needs in sorted(LEGACY_MANYLINUX.items(), key=lambda kv: -kv[1]):
        if glibc >= needs and (legacy == "manylinux2014" or arch in ("x86_64", "i686")):
            tags.append(f"{legacy}_{arch}")
    return Platform(tag, "linux", arch, tuple(tags))


def _unknown_platform(tag: str) -> UserError:
    return UserError(
        f"unknown platform {tag!r}: expected a wheel platform tag such as {PLATFORM_EXAMPLES}"
    )


def parse_python_version(text: str) -> str:
    if not re.fullmatch(r"3\.\d{1,2}(\.\d{1,2})?", text):
        raise UserError(f"--python-version {text!r}: expected 3.X or 3.X.Y, e.g. 3.12")
    return text


@dataclass(frozen=True)
class Target:
    python_version: str  # "3.12" or "3.12.3"
    platforms: tuple[Platform, ...]

    @classmethod
    def parse(cls, python_version: str, platforms: Iterable[str]) -> Target:
        parsed = tuple(parse_platform(p) for p in platforms) or (parse_platform(DEFAULT_PLATFORM),)
        machines = {(p.sys_platform, p.machine) for p in parsed}
        if len(machines) > 1:
            described = ", ".join(sorted(f"{s} {m}" for s, m in machines))
            raise UserError(
                f"the platforms name different machines ({described}): markers differ between "
                "them, so build one wheelhouse per machine"
            )
        return cls(parse_python_version(python_version), parsed)

    @property
    def pip_platforms(self) -> list[str]:
        return list(dict.fromkeys(t for p in self.platforms for t in p.pip_tags))

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker variables as they read on the target (never this machine's)."""
        parts = self.python_version.split(".")
        short = ".".join(parts[:2])
        full = self.python_version if len(parts) == 3 else f"{short}.0"
        p = self.platforms[0]
        system = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}[p.sys_platform]
        return {
            "implementation_name": "cpython",
            "implementation_version": full,
            "os_name": "nt" if p.sys_platform == "win32" else "posix",
            "platform_machine": p.machine,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": system,
            "platform_version": "",
            "python_full_version": full,
            "python_version": short,
            "sys_platform": p.sys_platform,
            "extra": "",
        }


def marker_applies(
    marker: Marker | None, environment: dict[str, str], extras: Iterable[str]
) -> bool:
    """Whether a requirement's marker holds on the target, for a package asked for with
    `extras` (a line guarded by `extra == "x"` applies when x is among them)."""
    if marker is None:
        return True
    return any(marker.evaluate({**environment, "extra": e}) for e in (sorted(extras) or [""]))
