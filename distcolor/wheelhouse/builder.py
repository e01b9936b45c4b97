"""The whole job: read the target and the have-list, walk distcolor's requirements into the
folder, add distcolor's own wheel, clear an earlier run's other versions out, and write the
install notes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from packaging.utils import canonicalize_name

from distcolor.errors import UserError
from distcolor.wheelhouse.have import read_have
from distcolor.wheelhouse.house import Wheelhouse, write_install_notes
from distcolor.wheelhouse.pip import PipDownloader, build_own_wheel, pip_build
from distcolor.wheelhouse.project import (
    GPU_IMAGE_PACKAGES,
    PYPROJECT,
    ROOT,
    installed_versions,
    project_requirements,
)
from distcolor.wheelhouse.resolve import Log, log_to_stderr, resolve
from distcolor.wheelhouse.target import DEFAULT_PYTHON, Target
from distcolor.wheelhouse.wheels import Fetch, Wheel, one_version, satisfies, wheel_metadata


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
    log: Log = log_to_stderr,
) -> Wheelhouse:
    target = Target.parse(python_version, platforms)
    extras = list(dict.fromkeys(extras))
    project, requires_python, roots = project_requirements(pyproject, extras)
    if requires_python and not satisfies(
        requires_python, target.marker_environment()["python_full_version"]
    ):
        raise UserError(f"{project} needs Python {requires_python}, not {target.python_version}")
    have, have_source = _have_list(have_file, everything, log)
    out = _output_folder(Path(out), log)
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
    own = _own_wheel(project, pyproject.parent, out, log) if own_wheel else None
    keep = [w.path.name for w in closure.wheels.values()] + ([own.path.name] if own else [])
    removed = _remove_others(out, set(keep))
    house = Wheelhouse(out, target, extras, closure, own, have_source, removed)
    write_install_notes(house)
    return house


def _have_list(
    have_file: Path | None, everything: bool, log: Log
) -> tuple[dict[str, str | None], str]:
    """(what the target holds, where that was read) for the notes: nothing with --all, else
    the have-list file, by default the GPU check image's."""
    if everything:
        log(
            "warning: --all fetches torch too: its wheel and the CUDA libraries it needs are "
            "several GB"
        )
        return {}, "none (--all)"
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
    return have, have_source


def _output_folder(out: Path, log: Log) -> Path:
    """--out created if missing, as an absolute path."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out {out}: {err.strerror}") from None
    out = out.resolve()
    if out.is_relative_to(ROOT):
        log(f"note: {out} is inside the checkout: keep it out of git (.git/info/exclude)")
    return out


def _own_wheel(project: str, project_root: Path, out: Path, log: Log) -> Wheel:
    log(f"building {project}'s own wheel from {project_root}")
    path = build_own_wheel(project_root, out)
    name, version, requires = wheel_metadata(path)
    return Wheel(canonicalize_name(name), version, path, requires, "-", "this project")


def _remove_others(out: Path, keep: set[str]) -> list[str]:
    """Deletes the wheels in `out` this run did not keep (an earlier run's, maybe another
    version: two of one package stop the install) -> their names; then checks that one
    version of each package is left."""
    removed = []
    for stale in sorted(out.glob("*.whl")):
        if stale.name not in keep:
            stale.unlink()
            removed.append(stale.name)
    doubled = one_version(out.glob("*.whl"))
    if doubled:
        raise UserError(f"{out} holds two versions of {', '.join(doubled)}")
    return removed
