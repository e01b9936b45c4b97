"""The wheelhouse built: its record (the wheels, their total size, the facts printed as
JSON), the notes written beside the wheels (DIR/requirements.txt and DIR/INSTALL.txt, the
commands for the target) and the summary table the program prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distcolor.wheelhouse.resolve import Closure
from distcolor.wheelhouse.target import Target
from distcolor.wheelhouse.wheels import Wheel


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
