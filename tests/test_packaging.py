"""A built wheel, installed outside the checkout, is the whole program: its distcolor-*
commands run, find the shipped configs, and import the installed package, not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_s_commands_work_outside_the_checkout(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = tmp_path / "source"  # a copy: building writes build/ into the source folder
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "distcolor", source / "distcolor", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("distcolor-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(target / "bin" / command), *args],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) == 7
    for command in scripts:
        done = run(command, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stderr[-500:])

    done = run("distcolor-train", "--dry-run", "train.max_steps=7")  # the shipped default
    assert done.returncode == 0, done.stderr
    assert "max_steps: 7" in done.stdout and "count: 3000" in done.stdout
    done = run("distcolor-summary", "--config", str(target / "distcolor/configs/paper.yaml"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["generator_params"] == 54_409_858
    done = run("distcolor-train", "train.max_steps=ten")  # a mistake: one line, status 2
    assert done.returncode == 2 and done.stderr.startswith("error: train.max_steps")
    where = subprocess.run(
        [sys.executable, "-c", "import distcolor.cli.train as m; print(m.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(target)), where
    # DeepSpeed's shipped files are found by their configs/ path from anywhere
    code = (
        "from distcolor.config import load_config\n"
        "from distcolor.backends.deepspeed_config import deepspeed_config\n"
        "cfg = load_config(None, ['deepspeed.config=configs/deepspeed/zero3.json'])\n"
        "print(deepspeed_config(cfg, world=2, precision=None)[0]['zero_optimization']['stage'])\n"
    )
    stage = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert stage.stdout.strip() == "3", stage.stderr[-1000:]
