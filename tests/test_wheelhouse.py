"""The wheelhouse builder (scripts/wheelhouse.py): markers read for the target, have-lists,
the dependency walk over tiny wheels made here, one version per package, one-line errors.
No network: the download step is a function copying from a local folder."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

from distcolor.errors import UserError
from distcolor.wheelhouse import build_wheelhouse, summary_table
from distcolor.wheelhouse.have import parse_have, read_have
from distcolor.wheelhouse.pip import PipDownloader
from distcolor.wheelhouse.resolve import resolve
from distcolor.wheelhouse.target import Target, marker_applies, parse_platform
from distcolor.wheelhouse.wheels import NoWheel, is_pure, one_version, wheel_metadata
from tests.helpers import run_script


def make_wheel(folder: Path, name: str, version: str, requires=(), tag="py3-none-any") -> Path:
    """A minimal wheel pip installs: a package, METADATA with Requires-Dist lines, WHEEL, RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{stem}-{tag}.whl"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {line}" for line in requires]
    files = {
        f"{name.replace('-', '_')}/__init__.py": "",
        f"{stem}.dist-info/METADATA": "\n".join(metadata) + "\n",
        f"{stem}.dist-info/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    files[f"{stem}.dist-info/RECORD"] = "".join(
        f"{f},,\n" for f in [*files, f"{stem}.dist-info/RECORD"]
    )
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def copy_from(index: Path):
    """fetch(spec, dest): the newest wheel in `index` that meets spec, copied into dest (what
    `pip download --no-deps` does against a real index)."""

    def fetch(spec: str, dest: Path) -> Path:
        requirement = Requirement(spec)
        found = []
        for path in index.glob("*.whl"):
            name, version, _, _ = parse_wheel_filename(path.name)
            if name == requirement.name and requirement.specifier.contains(version, True):
                found.append((version, path))
        if not found:
            raise NoWheel(f"No matching distribution found for {spec}")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(max(found)[1], dest))

    return fetch


@pytest.fixture
def index(tmp_path):
    """A local 'index': alpha needs beta[fast] and gamma, and more behind markers."""
    folder = tmp_path / "index"
    make_wheel(
        folder,
        "alpha",
        "1.0",
        [
            "beta[fast]",
            "gamma>=1",
            'delta; python_version >= "3.12"',  # not on this machine's 3.11, on the target
            'winonly; sys_platform == "win32"',
            "present2>=1",  # on the target: its subtree is not walked (not in this index)
            'docsonly; extra == "docs"',
        ],
    )
    make_wheel(folder, "beta", "1.0", ["gamma", 'speedy>=2; extra == "fast"'])
    make_wheel(folder, "gamma", "1.0")
    make_wheel(folder, "gamma", "2.0")
    make_wheel(folder, "delta", "1.0")
    make_wheel(folder, "speedy", "2.1", ["gamma<2"])
    make_wheel(folder, "winonly", "1.0")
    make_wheel(folder, "docsonly", "1.0")
    return folder


ROOTS = [
    Requirement("alpha>=1"),
    Requirement("beta"),  # plain first; alpha's beta[fast] adds the extra later
    Requirement("present>=1"),
    Requirement('oldpy; python_version < "3.10"'),
    Requirement("proj[dev]"),  # the project itself (through its own extra): skipped
]


def walk(index, dest, *, python="3.12", platform="manylinux_2_28_x86_64", pins=None, have=None):
    environment = Target.parse(python, [platform]).marker_environment()
    messages = []
    closure = resolve(
        ROOTS,
        project="proj",
        environment=environment,
        have={"present": "1.5", "present2": None} if have is None else have,
        dest=dest,
        fetch=copy_from(index),
        pins=pins,
        log=messages.append,
    )
    return closure, messages


def test_markers_are_read_for_the_target_not_this_machine():
    py310 = Target.parse("3.10", ["manylinux_2_28_aarch64"]).marker_environment()
    py312 = Target.parse("3.12.3", ["manylinux_2_28_x86_64"]).marker_environment()
    old = Marker('python_version < "3.11"')
    assert marker_applies(old, py310, ()) and not marker_applies(old, py312, ())
    assert py312["python_full_version"] == "3.12.3" and py310["python_full_version"] == "3.10.0"
    assert marker_applies(Marker('platform_machine == "aarch64"'), py310, ())
    assert not marker_applies(Marker('platform_machine == "aarch64"'), py312, ())
    assert marker_applies(Marker('sys_platform == "linux" and os_name == "posix"'), py312, ())
    windows = Target.parse("3.12", ["win_amd64"]).marker_environment()
    assert marker_applies(Marker('platform_system == "Windows"'), windows, ())
    assert windows["os_name"] == "nt" and windows["platform_machine"] == "AMD64"
    extra = Marker('extra == "fast" and python_version >= "3.12"')
    assert marker_applies(extra, py312, {"fast"}) and not marker_applies(extra, py312, ())
    assert not marker_applies(extra, py310, {"fast"})


def test_platforms():
    tags = parse_platform("manylinux_2_28_x86_64").pip_tags
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64"
    for tag in ("manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        assert tag in tags
    assert "manylinux_2_29_x86_64" not in tags
    arm = parse_platform("manylinux2014_aarch64").pip_tags
    assert "manylinux_2_17_aarch64" in arm and "manylinux1_aarch64" not in arm
    assert parse_platform("musllinux_1_2_x86_64").pip_tags[-1] == "musllinux_1_0_x86_64"
    for bad in ("linux", "manylinux_2_28_x86-64", "manylinux_2_28_sparc", "win64", "macosx_11_0"):
        with pytest.raises(UserError, match="unknown platform"):
            parse_platform(bad)
    with pytest.raises(UserError, match="one wheelhouse per machine"):
        Target.parse("3.12", ["manylinux_2_28_x86_64", "manylinux_2_28_aarch64"])
    with pytest.raises(UserError, match="--python-version"):
        Target.parse("312", [])


def test_have_list_parsing(tmp_path):
    text = """# pip list --format=freeze, and more
PyYAML==6.0.3
torch==2.11.0+cu130
typing_extensions==4.16.0
numpy
local-thing @ file:///tmp/local_thing-1.0-py3-none-any.whl
-e git+https://example.com/repo.git@abc#egg=editable_pkg
Package    Version
---------- -------
rich       15.0.0
Pillow === 13.0.0   # a comment
"""
    have = parse_have(text)
    assert have == {
        "pyyaml": "6.0.3",
        "torch": "2.11.0+cu130",
        "typing-extensions": "4.16.0",
        "numpy": None,
        "local-thing": None,
        "editable-pkg": None,
        "rich": "15.0.0",
        "pillow": "13.0.0",
    }
    with pytest.raises(UserError, match=r"have\.txt:2: cannot read"):
        parse_have("torch\nnot a package line at all\n", "have.txt")
    with pytest.raises(UserError, match="cannot read the have-list"):
        read_have(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="cannot read the have-list"):
        read_have(tmp_path)  # a folder


def test_walk_fetches_what_the_target_lacks_with_markers_and_extras(index, tmp_path):
    closure, _ = walk(index, tmp_path / "out")
    wheels = {name: w.version for name, w in closure.wheels.items()}
    # speedy comes in through beta's extra "fast", asked for by alpha after beta was fetched
    # plain; delta through a python_version marker true on a 3.12 target, whatever runs here.
    assert wheels == {
        "alpha": "1.0",
        "beta": "1.0",
        "gamma": "2.0",
        "delta": "1.0",
        "speedy": "2.1",
    }
    assert closure.skipped == {"present": "1.5", "present2": None}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        w.path.name for w in closure.wheels.values()
    )
    # speedy needs gamma<2, gamma 2.0 was taken first: one version kept, and a warning.
    assert any("gamma 2.0" in w and "gamma<2" in w for w in closure.warnings)

    older, _ = walk(index, tmp_path / "older", python="3.11")
    assert "delta" not in older.wheels
    windows, _ = walk(index, tmp_path / "windows", platform="win_amd64")
    assert "winonly" in windows.wheels


def test_have_versions_are_compared_not_refetched(index, tmp_path):
    closure, messages = walk(index, tmp_path / "out", have={"present": "0.5", "present2": "1"})
    assert "present" in closure.skipped
    assert any("present 0.5 on the target does not satisfy present>=1" in m for m in messages)


def test_pins_and_the_one_version_rule(index, tmp_path):
    # gamma pinned to the version "installed here": 1.0 everywhere, no warning from speedy.
    closure, _ = walk(index, tmp_path / "out", pins={"gamma": "1.0", "alpha": "9.9"})
    assert closure.wheels["gamma"].version == "1.0" and closure.wheels["gamma"].how == "pinned"
    # alpha 9.9 "installed here" has no wheel: the index's newest, with a warning.
    assert closure.wheels["alpha"].how == "index" and closure.wheels["alpha"].version == "1.0"
    assert any("alpha==9.9" in w and "took 1.0" in w for w in closure.warnings)
    assert not any("gamma" in w for w in closure.warnings)
    assert one_version((tmp_path / "out").glob("*.whl")) == {}
    doubled = one_version(
        [index / "gamma-1.0-py3-none-any.whl", index / "gamma-2.0-py3-none-any.whl"]
    )
    assert list(doubled) == ["gamma"]


def test_missing_wheel_is_built_or_named(index, tmp_path):
    sdists = tmp_path / "sdists"
    make_wheel(sdists, "sdistonly", "0.3")
    roots = [Requirement("sdistonly>=0.1")]
    environment = Target.parse("3.12", []).marker_environment()
    closure = resolve(
        roots,
        project="proj",
        environment=environment,
        have={},
        dest=tmp_path / "out",
        fetch=copy_from(index),
        build=copy_from(sdists),
        pins={"sdistonly": "0.3"},
        log=lambda _: None,
    )
    assert closure.wheels["sdistonly"].how == "built here"
    with pytest.raises(UserError, match=r"no wheel of sdistonly>=0.1 \(needed by proj\)"):
        resolve(
            roots,
            project="proj",
            environment=environment,
            have={},
            dest=tmp_path / "out2",
            fetch=copy_from(index),
            log=lambda _: None,
        )
    assert is_pure(index / "alpha-1.0-py3-none-any.whl")
    compiled = make_wheel(tmp_path / "c", "fast", "1.0", tag="cp311-cp311-linux_x86_64")
    assert not is_pure(compiled)
    assert wheel_metadata(index / "beta-1.0-py3-none-any.whl")[2] == [
        "gamma",
        'speedy>=2; extra == "fast"',
    ]


def test_build_wheelhouse_keeps_one_version_and_writes_install_notes(index, tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "proj"\nversion = "0.1"\nrequires-python = ">=3.11"\n'
        'dependencies = ["alpha>=1", "present"]\n'
        '[project.optional-dependencies]\nextra1 = ["delta"]\n'
    )
    have = tmp_path / "have.txt"
    have.write_text("present==2.0\npresent2\n")
    out = tmp_path / "house"
    make_wheel(out, "gamma", "0.5")  # an earlier run's: a second gamma would stop the install
    house = build_wheelhouse(
        out,
        python_version="3.12",
        have_file=have,
        extras=["extra1"],
        own_wheel=False,
        pyproject=pyproject,
        fetch=copy_from(index),
        build=None,
        log=lambda _: None,
    )
    assert house.removed == ["gamma-0.5-py3-none-any.whl"]
    assert one_version(out.glob("*.whl")) == {}
    assert sorted(w.name for w in house.wheels) == ["alpha", "beta", "delta", "gamma", "speedy"]
    facts = house.facts()
    assert facts["python_version"] == "3.12" and facts["platforms"] == ["manylinux_2_28_x86_64"]
    assert facts["total_mb"] == round(sum(p.stat().st_size for p in out.glob("*.whl")) / 1e6, 2)
    json.dumps(facts)
    assert (out / "requirements.txt").read_text().splitlines()[0] == "alpha==1.0"
    notes = (out / "INSTALL.txt").read_text()
    assert "--no-index --no-deps" in notes and "--target /tmp/site" in notes
    assert "total" in summary_table(house)
    with pytest.raises(UserError, match="unknown extra nope"):
        build_wheelhouse(out, extras=["nope"], pyproject=pyproject, fetch=copy_from(index))
    with pytest.raises(UserError, match="needs Python >=3.11, not 3.10"):
        build_wheelhouse(out, python_version="3.10", pyproject=pyproject, fetch=copy_from(index))


def test_unreachable_index_is_one_line_naming_the_package(tmp_path, monkeypatch):
    # A real pip against a closed local port: no network involved.
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")
    fetch = PipDownloader(Target.parse("3.12", []))
    with pytest.raises(UserError, match="index to download hjson==3.1.0: Failed to establish"):
        fetch("hjson==3.1.0", tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--have", "no/such/file.txt"], "cannot read the have-list no/such/file.txt"),
        (["--platform", "manylinux_2_28_x86-64"], "unknown platform 'manylinux_2_28_x86-64'"),
        (["--extras", "nope"], "unknown extra nope"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    result = run_script("scripts/wheelhouse.py", "--out", tmp_path / "w", *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_cli_all_and_have_exclusive(tmp_path):
    result = run_script("scripts/wheelhouse.py", "--out", tmp_path, "--all", "--have", "x")
    assert result.returncode == 2 and "not allowed with" in result.stderr
