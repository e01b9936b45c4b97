"""A wheelhouse for offline installs: distcolor's dependency closure as wheels for another
machine (its Python version and platform, not this one's), holding only what that machine
lacks (a have-list of what it already holds) or everything.

    target.py    the target's Python and platform tags; markers read as they would be there
    have.py      have-lists: what the target already holds
    project.py   distcolor's requirements, the checkout's paths, the versions installed here
    wheels.py    the Wheel record, a wheel's METADATA, purity, the one-version rule, NoWheel
    resolve.py   the walk over Requires-Dist, skipping what the target holds
    pip.py       pip download / pip wheel (the real fetch and build), pip's errors in one line
    builder.py   build_wheelhouse: the whole job, step by step
    house.py     the Wheelhouse built, its INSTALL.txt and requirements.txt, the summary table

Only stdlib and `packaging` are imported here (no torch, no pydantic), so a machine that
only builds wheelhouses needs nothing else. What the program (distcolor/cli/wheelhouse.py)
calls is importable from here.
"""

from distcolor.wheelhouse.builder import build_wheelhouse
from distcolor.wheelhouse.house import Wheelhouse, summary_table
from distcolor.wheelhouse.target import DEFAULT_PLATFORM, DEFAULT_PYTHON

__all__ = [
    "DEFAULT_PLATFORM",
    "DEFAULT_PYTHON",
    "Wheelhouse",
    "build_wheelhouse",
    "summary_table",
]
