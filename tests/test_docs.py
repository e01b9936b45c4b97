"""The docs stay true: every `scripts/*.py` and `benchmarks/*.py` command in README.md and
docs/ names a program that exists, with flags its --help lists and config keys the schema
has; every relative link points at a file; the README stays a front door."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from distcolor.config import Config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAM = re.compile(r"\b((?:scripts|benchmarks)/[a-z0-9_]+\.py)\b")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*)")
KEY = re.compile(r"(?<![\w./-])'?([a-z_]+(?:\.[a-z_]+)+)=")
TAKES_OVERRIDES = {"scripts/train.py", "scripts/summary.py"}


def commands() -> list[tuple[Path, str, str]]:
    """(page, program, the rest of its command line) for every program named with arguments:
    the text after the program up to the end of the line (joined over `\\` continuations),
    a backtick or a comment."""
    found = []
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for match in PROGRAM.finditer(line):
                rest = line[match.end() :]
                rest = re.split(r"`|\s#|;|\|\|", rest)[0]
                found.append((page, match.group(1), rest))
    return found


def helps(programs: set[str]) -> dict[str, str]:
    def run(program: str) -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, program, "--help"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return program, done.stdout if done.returncode == 0 else ""

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, sorted(programs)))


def config_has(key: str) -> bool:
    model = Config
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        # a section, an optional section (X | None), or a leaf
        options = getattr(annotation, "__args__", (annotation,))
        model = next((o for o in options if hasattr(o, "model_fields")), None)
    return True


def test_every_program_and_flag_the_docs_name_exists():
    found = commands()
    assert len(found) > 50  # the extraction works
    missing = sorted({program for _, program, _ in found if not (ROOT / program).is_file()})
    assert missing == []
    # a program's flags are checked where its --help has them (slurm_train.sh etc. aside)
    texts = helps({program for _, program, _ in found})
    problems = []
    for page, program, rest in found:
        if not texts.get(program):
            problems.append(f"{page.name}: {program} --help fails")
            continue
        for flag in FLAG.findall(rest):
            if flag not in texts[program]:
                problems.append(f"{page.name}: {program} has no {flag}")
        if program in TAKES_OVERRIDES:
            for key in KEY.findall(rest):
                if not config_has(key):
                    problems.append(f"{page.name}: {program}: no config key {key}")
    assert problems == []


def test_relative_links_point_at_files():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    # its two quick-start commands, as written
    assert "pip install torch==2.13.0 && pip install -e . && python scripts/train.py" in text
    assert 'pip install -e ".[dev,deepspeed]" && python -m pytest -q' in text
    for page in (ROOT / "docs").glob("*.md"):  # every page is reachable from it
        assert f"docs/{page.name}" in text, page.name
