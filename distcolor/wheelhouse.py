"""A wheelhouse for offline installs: distcolor's dependency closure as wheels for another
machine (its Python version and platform, not this one's), holding only what that machine
lacks (a have-list of what it already holds) or everything.

The walk: each requirement of distcolor (pyproject.toml, plus the extras asked for) whose
environment markers hold on the TARGET is either already there (named in the have-list:
skipped, and its own dependencies with it, since the target's pip installed them) or
fetched as a wheel, whose METADATA's Requires-Dist lines are walked in turn. One version of
each package is kept: two of one name stop a `pip install --no-deps` of the folder.

Only stdlib and `packaging` are imported here (no torch, no pydantic), so a machine that
only builds wheelhouses needs nothing else.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from distcolor.errors import UserError
from distcolor.paths import kind_of

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
# What this project's GPU check image already holds (names, versions where known): the
# default have-list when neither --have nor --all is given.
GPU_IMAGE_PACKAGES = ROOT / "benchmarks" / "gpu_image_packages.txt"
DEFAULT_PYTHON = "3.12"
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"

Log = Callable[[str], None]
# fetch(spec, dest) -> the wheel's path in dest. spec is "name==1.2" or "name>=1" (no extras,
# no markers). Raises NoWheel when the index has no wheel for the target, UserError otherwise.
Fetch = Callable[[str, Path], Path]


class NoWheel(UserError):
    """The index holds no wheel of this requirement for the target (maybe an sdist only)."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the target: Python version and platform tags -------------------------------------------

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


# --- what the target already holds ----------------------------------------------------------


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


# --- distcolor's own requirements -----------------------------------------------------------


def project_requirements(
    pyproject: Path, extras: Iterable[str]
) -> tuple[str, SpecifierSet, list[Requirement]]:
    """(project name, its requires-python, its dependencies plus those of `extras`)."""
    project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise UserError(
            f"unknown extra {', '.join(unknown)}: {project['name']} has "
            + ", ".join(sorted(optional))
        )
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += optional[extra]
    return (
        canonicalize_name(project["name"]),
        SpecifierSet(project.get("requires-python", "")),
        [Requirement(line) for line in lines],
    )


def installed_versions() -> dict[str, str]:
    """{canonical name: public version} of what this interpreter has installed: the versions
    the tests here ran against, which the wheelhouse pins unless --latest."""
    versions: dict[str, str] = {}
    for dist in importlib_metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        try:
            # torch 2.13.0+cpu -> 2.13.0: the index holds public versions only.
            versions.setdefault(canonicalize_name(name), Version(dist.version).public)
        except InvalidVersion:
            continue
    return versions


# --- wheels ---------------------------------------------------------------------------------


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


# --- the walk -------------------------------------------------------------------------------


@dataclass
class Closure:
    wheels: dict[str, Wheel] = field(default_factory=dict)
    skipped: dict[str, str | None] = field(default_factory=dict)  # name -> version on the target
    warnings: list[str] = field(default_factory=list)


def resolve(
    roots: list[Requirement],
    *,
    project: str,
    environment: dict[str, str],
    have: dict[str, str | None],
    dest: Path,
    fetch: Fetch,
    build: Fetch | None = None,
    pins: dict[str, str] | None = None,
    log: Log = _stderr,
) -> Closure:
    """Walk `roots` breadth first, fetching each requirement the target lacks into `dest`
    (`fetch`; `build` when the index has no wheel for the target) and walking its
    Requires-Dist. `pins`: versions to take when they satisfy the requirement (the ones
    installed here); the index's newest match otherwise.

    A requirement named in `have` is taken as satisfied, its subtree with it: the target's
    pip installed its dependencies. Its version is checked against the requirement where the
    have-list gives one, and a mismatch is a warning, not a fetch (two copies of a package on
    the target would make which one imports depend on the path's order)."""
    closure = Closure()
    pins = pins or {}
    queue: deque[tuple[Requirement, str]] = deque(
        (r, project) for r in roots if marker_applies(r.marker, environment, ())
    )

    def warn(message: str) -> None:
        closure.warnings.append(message)
        log(f"warning: {message}")

    def enqueue_dependencies(wheel: Wheel, extras: set[str]) -> None:
        for line in wheel.requires:
            try:
                requirement = Requirement(line)
            except InvalidRequirement as err:
                warn(
                    f"{wheel.name} {wheel.version}: cannot read Requires-Dist {line!r} "
                    f"({err}); skipped"
                )
                continue
            if marker_applies(requirement.marker, environment, extras):
                queue.append((requirement, f"{wheel.name}"))

    while queue:
        requirement, parent = queue.popleft()
        name = canonicalize_name(requirement.name)
        if name == project:
            continue
        if name in have:
            version = have[name]
            # Present means satisfied; its version is only compared, never re-fetched.
            if version is not None and not _contains(requirement.specifier, version):
                warn(
                    f"{name} {version} on the target does not satisfy {requirement} "
                    f"(needed by {parent}); left as it is"
                )
            if requirement.extras:
                # Its extras' dependencies cannot be read without its wheel: assumed there too.
                log(
                    f"note: {name} is on the target; the dependencies of its extras "
                    f"{sorted(requirement.extras)} are not checked"
                )
            closure.skipped.setdefault(name, version)
            continue
        if name in closure.wheels:
            wheel = closure.wheels[name]
            if not _contains(requirement.specifier, wheel.version):
                warn(
                    f"{name} {wheel.version} (for {wheel.needed_by}) does not satisfy "
                    f"{requirement} (needed by {parent}): one version is kept"
                )
            new = set(requirement.extras) - wheel.extras
            if new:
                wheel.extras |= new
                enqueue_dependencies(wheel, new)
            continue
        wheel = _fetch_one(requirement, name, parent, dest, fetch, build, pins, warn, log)
        wheel.extras = set(requirement.extras)
        closure.wheels[name] = wheel
        enqueue_dependencies(wheel, wheel.extras)
    return closure


def _contains(specifier: SpecifierSet, version: str) -> bool:
    try:
        return specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True  # not PEP 440 (an old legacy version): not judged


def _fetch_one(requirement, name, parent, dest, fetch, build, pins, warn, log) -> Wheel:
    open_spec = f"{name}{requirement.specifier}"
    pin = pins.get(name)
    pinned = f"{name}=={pin}" if pin and _contains(requirement.specifier, pin) else None
    tries: list[tuple[str, Fetch, str]] = []
    if pinned:
        tries.append((pinned, fetch, "pinned"))
    tries.append((open_spec, fetch, "index"))
    if build is not None:
        tries.append((pinned or open_spec, build, "built here"))
    failures = []
    for spec, step, how in tries:
        if how == "built here":
            log(f"building {spec} here (for {parent}): the index has no wheel of it")
        else:
            log(f"fetching {spec} (for {parent})")
        try:
            path = step(spec, dest)
        except NoWheel as err:
            failures.append(str(err))
            continue
        got_name, version, requires = wheel_metadata(path)
        if canonicalize_name(got_name) != name:
            raise UserError(f"asked for {spec}, got {path.name} (a wheel of {got_name})")
        if not _contains(requirement.specifier, version):
            warn(f"{path.name} does not satisfy {requirement} (needed by {parent})")
        if pinned and not _contains(SpecifierSet(f"=={pin}"), version):
            warn(
                f"{pinned} (the version installed here) has no wheel for the target: took {version}"
            )
        return Wheel(name, version, path, requires, parent, how)
    raise UserError(f"no wheel of {open_spec} (needed by {parent}) for the target: {failures[-1]}")


# --- pip: the real fetch and build ----------------------------------------------------------

# Lines pip writes when the index cannot be reached at all.
# Most telling first: the first one found is the reason given.
_NETWORK = [
    re.compile(p)
    for p in (
        r"Failed to establish a new connection: [^'\")]*",
        r"Temporary failure in name resolution|Name or service not known",
        r"Network is unreachable|No route to host|Connection refused",
        r"NewConnectionError|ConnectTimeoutError|ReadTimeoutError|ProxyError|SSLError",
    )
]


def _pip_error(spec: str, result: subprocess.CompletedProcess, what: str) -> UserError:
    """pip's failure as one line: unreachable index, no wheel for the target (NoWheel: the
    caller may build one), or pip's own last ERROR line."""
    text = f"{result.stdout}\n{result.stderr}"
    errors = [
        line.removeprefix("ERROR: ").strip()
        for line in text.splitlines()
        if line.startswith("ERROR:")
    ]
    lines = text.strip().splitlines()
    detail = errors[-1] if errors else (lines[-1] if lines else f"exit status {result.returncode}")
    for pattern in _NETWORK:
        if network := pattern.search(text):
            reason = network[0].strip()
            return UserError(f"cannot reach the package index to {what} {spec}: {reason}")
    if "No matching distribution found" in text:
        if "(from versions: none)" in text:
            detail += " (the index has no such package, or could not be reached)"
        return NoWheel(detail)
    return UserError(f"pip could not {what} {spec}: {detail}")


def _saved_wheel(output: str, cwd: Path, name: str, dest: Path) -> Path:
    for line in output.splitlines():
        m = re.search(r"(?:^Saved |File was already downloaded )(.+\.whl)\s*$", line.strip())
        if m:
            path = Path(m[1])
            path = path if path.is_absolute() else cwd / path
            if path.exists():
                return path.resolve()
    matches = [p for p in dest.glob("*.whl") if parse_wheel_filename(p.name)[0] == name]
    if not matches:
        raise UserError(f"pip said it fetched {name} but no wheel of it is in {dest}")
    return max(matches, key=lambda p: p.stat().st_mtime)


class PipDownloader:
    """fetch: `pip download --no-deps --only-binary=:all:` for the target's Python and
    platform tags into dest."""

    def __init__(self, target: Target):
        self.target = target

    def command(self, spec: str, dest: Path) -> list[str]:
        platforms = [arg for tag in self.target.pip_platforms for arg in ("--platform", tag)]
        return [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", self.target.python_version, "--implementation", "cp",
            *platforms, "--no-input", "-d", str(dest), spec,
        ]  # fmt: skip

    def __call__(self, spec: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(self.command(spec, dest), cwd=dest, capture_output=True, text=True)
        if result.returncode != 0:
            raise _pip_error(spec, result, "download")
        return _saved_wheel(result.stdout, dest, canonicalize_name(Requirement(spec).name), dest)


def pip_build(spec: str, dest: Path) -> Path:
    """build: `pip wheel --no-deps --no-build-isolation` of the sdist, here, for a package
    the index has no wheel of (deepspeed ships sdists only). The result must be pure
    (py3-none-any): a wheel compiled here is for this machine's Python, not the target's.
    Build isolation is off because such setup.py files import what is installed here
    (deepspeed's imports torch); DS_BUILD_OPS=0 keeps DeepSpeed's ops out of the wheel (they
    compile on the target, just in time, with its torch and CUDA)."""
    name = canonicalize_name(Requirement(spec).name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_BUILD_")}
    env["DS_BUILD_OPS"] = "0"
    with tempfile.TemporaryDirectory(prefix="wheelhouse-build-") as tmp:
        command = [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-binary", name, "--no-input", "-w", tmp, spec,
        ]  # fmt: skip
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            err = _pip_error(spec, result, "build a wheel of")
            raise UserError(
                f"no wheel of {spec} for the target, and building one here failed: {err}"
            )
        built = sorted(Path(tmp).glob("*.whl"))
        if not built:
            raise UserError(f"pip built no wheel of {spec}")
        wheel = built[0]
        if not is_pure(wheel):
            raise UserError(
                f"{spec} has no wheel for the target on the index, and the one built here, "
                f"{wheel.name}, is compiled for this machine's Python and platform: build it on a "
                "machine like the target (`pip wheel --no-deps NAME==VERSION`) and put it in "
                "the folder"
            )
        return Path(shutil.copy2(wheel, dest / wheel.name)).resolve()


def build_own_wheel(project_root: Path, dest: Path) -> Path:
    """distcolor's own wheel (pure), built from a copy of the checkout as it is, so that
    `pip install --no-index --find-links DIR distcolor[...]` works on the target and the
    build leaves no build/ or egg-info behind in the working tree."""
    with tempfile.TemporaryDirectory(prefix="wheelhouse-self-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.py", "setup.cfg"):
            if (project_root / name).is_file():
                shutil.copy2(project_root / name, copy / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(project_root / "distcolor", copy / "distcolor", ignore=ignore)
        out = Path(tmp) / "out"
        command = [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-input", "-w", str(out), str(copy),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            raise _pip_error("distcolor (this checkout)", result, "build a wheel of")
        wheel = next(out.glob("*.whl"))
        return Path(shutil.copy2(wheel, dest / wheel.name)).resolve()


# --- the whole job --------------------------------------------------------------------------


@dataclass
class Wheelhouse:
    out: Path
    target: Target
    extras: list[str]
    closure: Closure
    own: Wheel | None
    have_source: str
    removed: list[str]

    @property
    def wheels(self) -> list[Wheel]:
        wheels = sorted(self.closure.wheels.values(), key=lambda w: w.name)
        return wheels + ([self.own] if self.own else [])

    @property
    def total_bytes(self) -> int:
        return sum(w.size for w in self.wheels)

    def facts(self) -> dict:
        return {
            "wheels": [w.path.name for w in self.wheels],
            "total_mb": round(self.total_bytes / 1e6, 2),
            "python_version": self.target.python_version,
            "platforms": [p.tag for p in self.target.platforms],
            "extras": self.extras,
        }


def build_wheelhouse(
    out: Path,
    *,
    python_version: str = DEFAULT_PYTHON,
    platforms: Iterable[str] = (),
    have_file: Path | None = None,
    everything: bool = False,
    extras: Iterable[str] = (),
    latest: bool = False,
    own_wheel: bool = True,
    pyproject: Path = PYPROJECT,
    fetch: Fetch | None = None,
    build: Fetch | None = pip_build,
    log: Log = _stderr,
) -> Wheelhouse:
    target = Target.parse(python_version, platforms)
    extras = list(dict.fromkeys(extras))
    project, requires_python, roots = project_requirements(pyproject, extras)
    if requires_python and not _contains(
        requires_python, target.marker_environment()["python_full_version"]
    ):
        raise UserError(f"{project} needs Python {requires_python}, not {target.python_version}")
    if everything:
        have, have_source = {}, "none (--all)"
        log(
            "warning: --all fetches torch too: its wheel and the CUDA libraries it needs are "
            "several GB"
        )
    else:
        have_file = Path(have_file) if have_file else GPU_IMAGE_PACKAGES
        have = read_have(have_file)
        have_source = str(have_file) + (
            "" if have_file != GPU_IMAGE_PACKAGES else " (this project's GPU check image)"
        )
        if not have:
            log(
                f"warning: the have-list {have_file} names no package: everything is fetched, "
                "torch included"
            )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out {out}: {err.strerror}") from None
    out = out.resolve()
    if out.is_relative_to(ROOT):
        log(f"note: {out} is inside the checkout: keep it out of git (.git/info/exclude)")
    log(
        f"target: Python {target.python_version}, "
        f"{', '.join(p.tag for p in target.platforms)}; have-list: {have_source}"
    )
    closure = resolve(
        roots,
        project=project,
        environment=target.marker_environment(),
        have=have,
        dest=out,
        fetch=fetch or PipDownloader(target),
        build=build,
        pins=None if latest else installed_versions(),
        log=log,
    )
    own = None
    if own_wheel:
        log(f"building {project}'s own wheel from {pyproject.parent}")
        path = build_own_wheel(pyproject.parent, out)
        name, version, requires = wheel_metadata(path)
        own = Wheel(canonicalize_name(name), version, path, requires, "-", "this project")
    keep = {w.path.name for w in closure.wheels.values()} | ({own.path.name} if own else set())
    removed = []
    for stale in sorted(out.glob("*.whl")):
        if stale.name not in keep:  # an earlier run's, another version: two stop the install
            stale.unlink()
            removed.append(stale.name)
    doubled = one_version(out.glob("*.whl"))
    if doubled:
        raise UserError(f"{out} holds two versions of {', '.join(doubled)}")
    house = Wheelhouse(out, target, extras, closure, own, have_source, removed)
    write_install_notes(house)
    return house


def write_install_notes(house: Wheelhouse) -> None:
    """DIR/requirements.txt (the wheels but distcolor's own, pinned) and DIR/INSTALL.txt."""
    out = house.out
    deps = sorted(house.closure.wheels.values(), key=lambda w: w.name)
    (out / "requirements.txt").write_text("".join(f"{w.name}=={w.version}\n" for w in deps))
    extras = f"[{','.join(house.extras)}]" if house.extras else ""
    platforms = ", ".join(p.tag for p in house.target.platforms)
    torch_line = (
        "torch is in this folder (--all)"
        if "torch" in house.closure.wheels
        else ("torch is not in this folder: the environment's own is used")
    )
    lines = [
        f"# Wheelhouse for distcolor{extras}: Python {house.target.python_version}, {platforms}",
        f"# Built by scripts/wheelhouse.py. Have-list: {house.have_source};",
        f"# {len(house.closure.skipped)} packages it names were skipped. {len(house.wheels)} "
        f"wheels, {house.total_bytes / 1e6:.1f} MB; {torch_line}.",
        "",
        "# Where this folder lies on the target (a relative path is read from the checkout):",
        f"WHEELS={out}",
        "",
        "# A. From a checkout of distcolor (the GPU check suite): the packages the target lacks,",
        "#    not distcolor itself (the checkout's code is what runs). The .pth file puts",
        "#    /tmp/site on every process's path, those started with their own PYTHONPATH too",
        "#    (it needs a writable site-packages: root, or a venv; else PYTHONPATH alone).",
        "python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "
        '--find-links "$WHEELS" -r "$WHEELS/requirements.txt"',
        'echo /tmp/site > "$(python3 -c "import sysconfig; print(sysconfig.get_path('
        "'purelib'))\")/distcolor-wheelhouse.pth\" || true",
        "export PYTHONPATH=$PWD:/tmp/site",
        "",
    ]
    if house.own:
        lines += [
            "# B. distcolor installed as a package (a cluster's venv): pip installs what is",
            "#    missing from this folder and leaves what is installed alone, torch included,",
            "#    when it satisfies distcolor's requirement (no --upgrade).",
            f"python3 -m pip install --no-index --find-links \"$WHEELS\" 'distcolor{extras}'",
            "",
        ]
    (out / "INSTALL.txt").write_text("\n".join(lines))


def summary_table(house: Wheelhouse) -> str:
    rows = [("package", "version", "MB", "from")]
    rows += [(w.name, w.version, f"{w.size / 1e6:.2f}", w.how) for w in house.wheels]
    rows.append(("total", "", f"{house.total_bytes / 1e6:.2f}", f"{len(house.wheels)} wheels"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    text = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3]]
        text.append("  ".join(cells).rstrip())
        if n == 0 or n == len(rows) - 2:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)
