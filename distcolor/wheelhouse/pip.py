"""pip, the real fetch and build: `pip download` of a wheel for the target's tags, `pip wheel`
of an sdist the index has no wheel of (it must come out pure), distcolor's own wheel from the
checkout, and pip's failures read into one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from distcolor.errors import UserError
from distcolor.wheelhouse.target import Target
from distcolor.wheelhouse.wheels import NoWheel, is_pure

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
