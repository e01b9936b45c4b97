"""The dependency walk: from distcolor's requirements, breadth first, each requirement whose
markers hold on the target is either already there (named in the have-list: skipped, its own
dependencies with it, since the target's pip installed them) or fetched as a wheel whose
Requires-Dist lines are walked in turn. One version of each package is kept: two of one name
stop a `pip install --no-deps` of the folder."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from distcolor.errors import UserError
from distcolor.wheelhouse.target import marker_applies
from distcolor.wheelhouse.wheels import Fetch, NoWheel, Wheel, satisfies, wheel_metadata

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Closure:
    wheels: dict[str, Wheel] = field(default_factory=dict)
    skipped: dict[str, str | None] = field(default_factory=dict)  # name -> version on the target
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Walk:
    """The walk's state: the closure so far and the requirements still to visit, each with
    the name of what needs it."""

    environment: dict[str, str]
    log: Log
    closure: Closure = field(default_factory=Closure)
    queue: deque[tuple[Requirement, str]] = field(default_factory=deque)

    def warn(self, message: str) -> None:
        self.closure.warnings.append(message)
        self.log(f"warning: {message}")

    def enqueue_dependencies(self, wheel: Wheel, extras: set[str]) -> None:
        for line in wheel.requires:
            try:
                requirement = Requirement(line)
            except InvalidRequirement as err:
                self.warn(
                    f"{wheel.name} {wheel.version}: cannot read Requires-Dist {line!r} "
                    f"({err}); skipped"
                )
                continue
            if marker_applies(requirement.marker, self.environment, extras):
                self.queue.append((requirement, f"{wheel.name}"))

    def skip_present(
        self, requirement: Requirement, name: str, version: str | None, parent: str
    ) -> None:
        """A package the target holds: present means satisfied; its version is only
        compared, never re-fetched."""
        if version is not None and not satisfies(requirement.specifier, version):
            self.warn(
                f"{name} {version} on the target does not satisfy {requirement} "
                f"(needed by {parent}); left as it is"
            )
        if requirement.extras:
            # Its extras' dependencies cannot be read without its wheel: assumed there too.
            self.log(
                f"note: {name} is on the target; the dependencies of its extras "
                f"{sorted(requirement.extras)} are not checked"
            )
        self.closure.skipped.setdefault(name, version)

    def revisit_kept(self, requirement: Requirement, wheel: Wheel, parent: str) -> None:
        """A package already fetched, asked for again: its version stays (one is kept), and
        extras not asked for before bring their dependencies."""
        if not satisfies(requirement.specifier, wheel.version):
            self.warn(
                f"{wheel.name} {wheel.version} (for {wheel.needed_by}) does not satisfy "
                f"{requirement} (needed by {parent}): one version is kept"
            )
        new = set(requirement.extras) - wheel.extras
        if new:
            wheel.extras |= new
            self.enqueue_dependencies(wheel, new)

    def keep(self, wheel: Wheel, extras: set[str]) -> None:
        wheel.extras = extras
        self.closure.wheels[wheel.name] = wheel
        self.enqueue_dependencies(wheel, wheel.extras)


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
    log: Log = log_to_stderr,
) -> Closure:
    """Walk `roots` breadth first, fetching each requirement the target lacks into `dest`
    (`fetch`; `build` when the index has no wheel for the target) and walking its
    Requires-Dist. `pins`: versions to take when they satisfy the requirement (the ones
    installed here); the index's newest match otherwise.

    A requirement named in `have` is taken as satisfied, its subtree with it: the target's
    pip installed its dependencies. Its version is checked against the requirement where the
    have-list gives one, and a mismatch is a warning, not a fetch (two copies of a package on
    the target would make which one imports depend on the path's order)."""
    walk = _Walk(environment, log)
    walk.queue.extend((r, project) for r in roots if marker_applies(r.marker, environment, ()))
    pins = pins or {}
    while walk.queue:
        requirement, parent = walk.queue.popleft()
        name = canonicalize_name(requirement.name)
        if name == project:
            continue
        if name in have:
            walk.skip_present(requirement, name, have[name], parent)
        elif name in walk.closure.wheels:
            walk.revisit_kept(requirement, walk.closure.wheels[name], parent)
        else:
            wheel = _fetch_one(requirement, name, parent, dest, fetch, build, pins, walk.warn, log)
            walk.keep(wheel, set(requirement.extras))
    return walk.closure


def _fetch_one(requirement, name, parent, dest, fetch, build, pins, warn, log) -> Wheel:
    """One requirement's wheel: the version installed here if it satisfies, else the index's
    newest match, else (with `build`) one built here."""
    open_spec = f"{name}{requirement.specifier}"
    pin = pins.get(name)
    pinned = f"{name}=={pin}" if pin and satisfies(requirement.specifier, pin) else None
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
        if not satisfies(requirement.specifier, version):
            warn(f"{path.name} does not satisfy {requirement} (needed by {parent})")
        if pinned and not satisfies(SpecifierSet(f"=={pin}"), version):
            warn(
                f"{pinned} (the version installed here) has no wheel for the target: took {version}"
            )
        return Wheel(name, version, path, requires, parent, how)
    raise UserError(f"no wheel of {open_spec} (needed by {parent}) for the target: {failures[-1]}")
