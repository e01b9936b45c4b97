"""Untrusted model files: a checkpoint or export that lies about its sizes or is damaged
is one `error:` line (UserError; exit 2 from the scripts) at every entry point, never a
traceback and never an allocation beyond the machine.

Every kind of hostile file (tests/hostile_models.py) goes through every entry point that
takes it, all in one child process held to MEMORY_LIMIT of address space: the API
(`load_generator`, `Colorizer.from_checkpoint`, `colorize`, `write_report`,
`export_generator`) and the scripts (evaluate.py, export.py, colorize.py, run as
`__main__` under their own `run_main`). One process keeps this to seconds (torch is
imported once); a few cases also run as separate script processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from tests.hostile_models import NOT_OURS, checkpoint_kinds, export_kinds, good_export

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 4 << 30  # address space: a real allocation of what a file claims fails
CHECKPOINT_ENTRIES = [
    "load_generator",
    "Colorizer.from_checkpoint",
    "colorize",
    "write_report",
    "export_generator",
    "scripts/evaluate.py",
    "scripts/export.py",
    "scripts/colorize.py",
]
EXPORT_ENTRIES = [e for e in CHECKPOINT_ENTRIES if "export" not in e]  # export takes checkpoints
TORCH_ADVICE = ("Re-running", "will likely succeed", "add_safe_globals", "two options")


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


# --- the child process ----------------------------------------------------------------


def _api(entry: str, path: Path, work: Path, out: Path) -> None:
    from PIL import Image

    from distcolor import colorize
    from distcolor.evaluate.report import write_report
    from distcolor.infer.colorizer import Colorizer
    from distcolor.infer.export import export_generator
    from distcolor.infer.weights import load_generator

    if entry == "load_generator":
        load_generator(path)
    elif entry == "Colorizer.from_checkpoint":
        Colorizer.from_checkpoint(path, device="cpu")
    elif entry == "colorize":
        colorize(Image.new("L", (16, 16), 100), path, device="cpu")
    elif entry == "write_report":
        write_report(path, work / "shards", out, num_workers=0, device="cpu")
    elif entry == "export_generator":
        export_generator(path, out)
    else:
        raise ValueError(entry)


def _script_argv(entry: str, path: Path, work: Path, out_dir: Path) -> list[str]:
    out = ["--out", str(out_dir)]
    if entry == "scripts/evaluate.py":
        return ["--checkpoint", str(path), "--shards", str(work / "shards"), *out, "--workers", "0"]
    if entry == "scripts/export.py":
        return ["--checkpoint", str(path), *out]
    return [str(work / "photos"), "--checkpoint", str(path), *out, "--device", "cpu"]


def run_entry(entry: str, path: Path, work: Path, out: Path) -> dict:
    """What `entry` did with `path` (writing into `out`, if it got that far):
    {"status": 2 / 0 / "user_error" / "ok" / "traceback", "message": the error text}."""
    from distcolor.errors import UserError

    if not entry.startswith("scripts/"):
        try:
            _api(entry, path, work, out)
        except UserError as err:
            return {"status": "user_error", "message": str(err)}
        except BaseException:  # noqa: BLE001 (what escaped is the finding)
            return {"status": "traceback", "message": traceback.format_exc()}
        return {"status": "ok", "message": ""}
    sys.argv = [entry, *_script_argv(entry, path, work, out)]
    err, status = io.StringIO(), 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(str(ROOT / entry), run_name="__main__")
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001
            status = "traceback"
            err.write(traceback.format_exc())
    return {"status": status, "message": err.getvalue()}


def child_main(plan_file: str, results_file: str) -> None:
    """Run every planned (case, entry, path) and write what each did."""
    import torch

    torch.set_num_threads(1)
    results = []
    for n, item in enumerate(json.loads(Path(plan_file).read_text())):
        out = Path(item["work"]) / "out" / str(n)
        results.append(
            {**item, **run_entry(item["entry"], Path(item["path"]), Path(item["work"]), out)}
        )
    Path(results_file).write_text(json.dumps(results))


# --- building the files and running the child -----------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _work_folder(root: Path) -> Path:
    """What the entry points need besides the model file: an (empty) shard folder, a
    photo, output folders (never written: each file is refused first)."""
    from PIL import Image

    work = root / "work"
    (work / "shards").mkdir(parents=True)
    (work / "photos").mkdir()
    Image.new("L", (16, 16), 90).save(work / "photos" / "gray.png")
    return work


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[tuple[str, str], list[dict]]:
    root = tmp_path_factory.mktemp("hostile")
    work = _work_folder(root)
    good = good_export(root / "good")
    plan = []
    for kind, kinds, entries in (
        ("checkpoint", checkpoint_kinds(), CHECKPOINT_ENTRIES),
        ("export", export_kinds(), EXPORT_ENTRIES),
    ):
        for name, (make, _) in kinds.items():
            folder = root / kind / _slug(name)
            folder.mkdir(parents=True)
            path = make(folder) if kind == "checkpoint" else make(folder, good)
            for entry in entries:
                plan.append(
                    {
                        "kind": kind,
                        "name": name,
                        "entry": entry,
                        "path": str(path),
                        "work": str(work),
                    }
                )
    (root / "plan.json").write_text(json.dumps(plan))
    code = (
        "import sys; from tests.test_untrusted_files import child_main; child_main(*sys.argv[1:])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root / "plan.json"), str(root / "results.json")],
        cwd=ROOT,
        env=env,
        preexec_fn=limit_memory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found: dict[tuple[str, str], list[dict]] = {}
    for result in json.loads((root / "results.json").read_text()):
        found.setdefault((result["kind"], result["name"]), []).append(result)
    return found


def assert_one_line_refusal(result: dict, expected: str) -> None:
    """A UserError (exit 2, `error: ...`) of one line that names the file and matches
    `expected`; never a traceback, never torch's advice to drop weights_only."""
    where = f"{result['entry']} on {result['name']!r}"
    message = result["message"]
    assert "Traceback" not in message, f"{where}:\n{message}"
    if result["entry"].startswith("scripts/"):
        assert result["status"] == 2, f"{where}: exit {result['status']}\n{message}"
        assert message.startswith("error: "), f"{where}: {message}"
    else:
        assert result["status"] == "user_error", f"{where}: {result['status']}\n{message}"
    assert len(message.strip().splitlines()) == 1, f"{where}: {message}"
    assert re.search(expected, message), f"{where}: {message!r} does not match {expected!r}"
    assert Path(result["path"]).name in message, f"{where}: the file is not named: {message}"
    assert not any(advice in message for advice in TORCH_ADVICE), f"{where}: {message}"


@pytest.mark.parametrize("name", list(checkpoint_kinds()))
def test_a_hostile_checkpoint_is_one_line_at_every_entry_point(verdicts, name):
    _, expected = checkpoint_kinds()[name]
    results = verdicts["checkpoint", name]
    assert [r["entry"] for r in results] == CHECKPOINT_ENTRIES
    for result in results:
        assert_one_line_refusal(result, expected)


@pytest.mark.parametrize("name", list(export_kinds()))
def test_a_hostile_export_is_one_line_at_every_entry_point(verdicts, name):
    _, expected = export_kinds()[name]
    results = verdicts["export", name]
    assert [r["entry"] for r in results] == EXPORT_ENTRIES
    for result in results:
        assert_one_line_refusal(result, expected)


def test_the_refusal_of_a_pickled_object_does_not_pass_on_torchs_advice(verdicts):
    message = verdicts["checkpoint", "pickled object"][0]["message"]
    assert re.search(NOT_OURS, message) and "trust its origin" in message
    assert not any(advice in message for advice in TORCH_ADVICE)


# --- as separate script processes -----------------------------------------------------


def run_script_limited(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=limit_memory,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_colorize_refuses_a_checkpoint_claiming_a_huge_generator(tmp_path):
    """The issue's case: a config claiming a generator of gigabytes, its tensors stride-0
    views of one entry each. Built for real it needs about 6 GB; refused at 4 GB."""
    make, _ = checkpoint_kinds()["huge claim backed by views"]
    checkpoint = make(tmp_path)
    (tmp_path / "photos").mkdir()
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "photos" / "a.png")
    proc = run_script_limited(
        "colorize.py", str(tmp_path / "photos"), "--checkpoint", str(checkpoint),
        "--out", str(tmp_path / "out"), "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "repeat or overlap" in proc.stderr


SCRIPT_CASES = [
    ("checkpoint", "width far beyond the bound"),
    ("checkpoint", "huge claim backed by views"),
    ("checkpoint", "tensor transposed"),
    ("checkpoint", "pickled object"),
    ("checkpoint", "truncated file"),
    ("export", "width far beyond the bound"),
    ("export", "encoded shape huge"),
    ("export", "header offsets beyond the file"),
]


SCRIPT_RUNS = [
    (script, kind, name)
    for script in ("evaluate.py", "export.py", "colorize.py")
    for kind, name in SCRIPT_CASES
    if not (kind == "export" and script == "export.py")  # export.py takes checkpoints
]


@pytest.mark.faults
@pytest.mark.parametrize(("script", "kind", "name"), SCRIPT_RUNS)
def test_each_script_as_its_own_process(tmp_path, script, kind, name):
    work = _work_folder(tmp_path)
    (tmp_path / "file").mkdir()
    if kind == "checkpoint":
        make, expected = checkpoint_kinds()[name]
        path = make(tmp_path / "file")
    else:
        make, expected = export_kinds()[name]
        path = make(tmp_path / "file", good_export(tmp_path / "good"))
    proc = run_script_limited(
        script, *_script_argv(f"scripts/{script}", path, work, tmp_path / "o")
    )
    result = {"entry": f"scripts/{script}", "name": name, "path": str(path)}
    assert_one_line_refusal({**result, "status": proc.returncode, "message": proc.stderr}, expected)
