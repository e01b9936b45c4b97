"""distcolor's own side of the walk: where the checkout lies (its pyproject.toml, the GPU
check image's default have-list), the requirements it declares, and the versions installed
here (the ones the tests ran against, pinned unless --latest)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from distcolor.errors import UserError

# The checkout's top: this file is distcolor/wheelhouse/project.py.
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
# What this project's GPU check image already holds (names, versions where known): the
# default have-list when neither --have nor --all is given.
GPU_IMAGE_PACKAGES = ROOT / "benchmarks" / "gpu_image_packages.txt"


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
