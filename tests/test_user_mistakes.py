"""User mistakes end as one `error:` line, never a traceback or a wrong result: bad paths
and config files for every script, a data.image_size far beyond the shards, a step that
cannot fit in memory, a resume with nothing left to train, and colorize's exit status
(1 when some inputs have no output; FIFOs and devices skipped, never opened).

The command lines run in one subprocess (tests/bad_inputs.py: torch imported once) under
a 4 GB address-space limit, so an allocation of the machine fails the test instead of
swapping; each case is its own test below.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from distcolor.errors import UserError
from distcolor.paths import input_folder, output_folder, read_text_file
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 4 << 30  # bytes: far above what these runs need, far below a huge allocation
LONG = "n" * 300  # over the 255-byte limit of a file name


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_limited(*args, timeout: int) -> subprocess.CompletedProcess:
    """`python ARGS` from the checkout under the address-space limit, output captured."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
        preexec_fn=_limited,
    )


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_shards) -> SimpleNamespace:
    """A folder of things that are not what a path should be."""
    tmp = tmp_path_factory.mktemp("mistakes")
    b = SimpleNamespace(tmp=tmp, shards=tiny_shards, file=tmp / "a_file", fifo=tmp / "fifo.png")
    b.file.write_text("not a folder\n")
    os.mkfifo(b.fifo)
    b.socket = tmp / "sock.yaml"
    b.server = socket.socket(socket.AF_UNIX)
    b.server.bind(str(b.socket))
    configs = {
        "binary.yaml": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "latin1.yaml": b"run:\n  name: caf\xe9\n",
        "list.yaml": b"- data\n- model\n",
        "scalar.yaml": b"42\n",
        "broken.yaml": b"data: {batch_size: [}\n",
        "deep.yaml": b"[" * 5_000,
        "date.yaml": b"run:\n  seed: 2020-13-45\n",
        "section.yaml": b"data: 5\n",
        "huge.yaml": b"# " + b"x" * (11 * 2**20) + b"\n",
    }
    for name, data in configs.items():
        (tmp / name).write_bytes(data)
    (tmp / "config_dir.yaml").mkdir()
    b.photos = tmp / "photos"  # one good photo, a FIFO and a folder holding another pair
    (b.photos / "more").mkdir(parents=True)
    Image.new("L", (40, 30), 120).save(b.photos / "p.png")
    Image.new("L", (36, 36), 60).save(b.photos / "more" / "q.png")
    os.mkfifo(b.photos / "more" / "pipe.jpg")
    (tmp / "no_images").mkdir()
    (tmp / "no_images" / "notes.txt").write_text("text")
    blocked = tmp / "blocked_out"  # where p.png's temporary file is a folder: writing fails
    (blocked / ".p.png.partial").mkdir(parents=True)
    b.blocked = blocked
    yield b
    b.server.close()


def _train(b, name: str, *extra: str) -> list[str]:
    base = tiny_overrides(b.tmp, b.shards, **{"run.name": name, "train.eval_images": 0})
    return ["scripts/train.py", *base, *extra]


def _cases(b) -> list[tuple[str, list[str], int, str]]:
    """(name, argv, exit status, text of the error line) for every mistake."""
    t, f, run = b.tmp, b.file, b.tmp / "runs" / "first"
    cases = [
        ("train_first_run", _train(b, "first", "train.max_steps=2"), 0, ""),
        # --config: scripts/train.py and scripts/summary.py read it alike
        *[
            (f"{script}_config_{kind}", [f"scripts/{script}.py", "--config", path], 2, message)
            for script in ("train", "summary")
            for kind, path, message in [
                ("missing", t / "none.yaml", "none.yaml does not exist"),
                ("binary", t / "binary.yaml", "is a binary file, not text"),
                ("latin1", t / "latin1.yaml", "is not UTF-8 text (byte 16 is invalid)"),
                ("list", t / "list.yaml", "top level must be a mapping of sections"),
                ("scalar", t / "scalar.yaml", "top level must be a mapping of sections"),
                ("broken", t / "broken.yaml", "not valid YAML (ParserError at line 1)"),
                ("deep", t / "deep.yaml", "not valid YAML (nested too deeply)"),
                ("date", t / "date.yaml", "not valid YAML (ValueError)"),
                ("section", t / "section.yaml", "data: input should be a valid dictionary"),
                ("huge", t / "huge.yaml", "is over 10 MB, not a config"),
                ("folder", t / "config_dir.yaml", "is a folder, not a file"),
                ("fifo", b.fifo, "is a FIFO (named pipe), not a file"),
                ("socket", b.socket, "is a socket, not a file"),
                ("device", "/dev/null", "is a character device, not a file"),
                ("long", t / LONG, "has a name of 300 bytes (at most 255)"),
                ("through_file", f / "c.yaml", f"cannot be reached: {f} is a file, not a folder"),
            ]
        ],
        # paths in the training config and --resume
        *[
            (f"train_{name}", _train(b, "x", *extra), 2, message)
            for name, extra, message in [
                ("out_dir_file", [f"run.out_dir={f}"], f"run.out_dir: {f} is a file, not a folder"),
                ("out_dir_through_file", [f"run.out_dir={f}/runs"], "cannot be created: "),
                ("out_dir_long", [f"run.out_dir={t / LONG}"], "run.out_dir: "),
                ("out_dir_long_inside", [f"run.out_dir={t / LONG / 'r'}"], "has a name of 300"),
                ("out_dir_device", ["run.out_dir=/dev/null"], "is a character device, not a"),
                ("run_name_long", [f"run.name={LONG}"], "run.name: "),
                ("shards_file", [f"data.shards={f}"], f"data.shards: {f} is a file, not a folder"),
                ("shards_through_file", [f"data.shards={f}/s"], "cannot be reached: "),
                ("shards_long", [f"data.shards={t / LONG}"], "has a name of 300 bytes"),
                ("shards_missing", [f"data.shards={t}/none"], "data.shards: folder "),
                ("shards_fifo", [f"data.shards={b.fifo}"], "is a FIFO (named pipe), not a folder"),
                (
                    "synthetic_through_file",
                    [f"data.shards={f}/s", "data.synthetic.count=10"],
                    f"data.shards: {f}/s cannot be created: {f} is a file",
                ),
                ("resume_file", ["--resume", str(f)], f"--resume: {f} is a file, not a folder"),
                ("resume_long", ["--resume", str(t / LONG)], "--resume: "),
                ("resume_missing", ["--resume", str(t / "gone")], "--resume: folder "),
                # resources, before any data is built or weight allocated
                ("image_size_huge", ["data.image_size=99968"], "upscale each 2499x"),
                ("image_size_5x", ["data.image_size=224"], "(at most 4x is allowed)"),
                ("batch_huge", ["data.batch_size=4000000"], "one training step needs about"),
                ("width_huge", ["model.generator.width=100000"], "lower data.batch_size"),
            ]
        ],
        # a resume with nothing left to train (the first case's checkpoint is at step 2)
        ("resume_below", [*_train(b, "first", "train.max_steps=1"), "--resume"], 2, "beyond"),
        ("resume_equal", [*_train(b, "first", "train.max_steps=2"), "--resume"], 2, "already at"),
        (
            "resume_auto_equal",
            [*_train(b, "first", "train.max_steps=2"), "--resume", "auto"],
            0,
            "",
        ),
        # scripts/make_shards.py
        *[
            (f"make_shards_{name}", ["scripts/make_shards.py", *args], 2, message)
            for name, args, message in [
                ("out_file", ["--out", f, "--synthetic", "10"], "--out: "),
                ("out_through_file", ["--out", f / "s", "--synthetic", "10"], "cannot be created"),
                ("out_long", ["--out", t / LONG, "--synthetic", "10"], "has a name of 300 bytes"),
                ("out_device", ["--out", "/dev/null", "--synthetic", "10"], "character device"),
                ("source_file", ["--out", t / "s", "--source", f"a={f}"], "is a file, not a fol"),
                ("source_long", ["--out", t / "s", "--source", f"a={t / LONG}"], "300 bytes"),
                ("source_fifo", ["--out", t / "s", "--source", f"a={b.fifo}"], "is a FIFO"),
                ("source_missing", ["--out", t / "s", "--source", f"a={t}/no"], "does not exist"),
            ]
        ],
        # scripts/evaluate.py and scripts/export.py
        *[
            (f"evaluate_{name}", ["scripts/evaluate.py", *args], 2, message)
            for name, args, message in [
                ("checkpoint_long", ["--checkpoint", t / LONG, "--shards", t], "300 bytes"),
                ("checkpoint_through", ["--checkpoint", f / "c", "--shards", t], "is a file"),
                ("checkpoint_fifo", ["--checkpoint", b.fifo, "--shards", t], "is a FIFO"),
                ("shards_file", ["--checkpoint", t, "--shards", f], "--shards: "),
                ("shards_long", ["--checkpoint", t, "--shards", t / LONG], "300 bytes"),
                ("out_file", ["--checkpoint", t, "--shards", t, "--out", f], "--out: "),
                ("out_long", ["--checkpoint", t, "--shards", t, "--out", t / LONG], "300 b"),
                ("out_through", ["--checkpoint", t, "--shards", t, "--out", f / "r"], "a file"),
                (
                    "image_size_huge",
                    ["--checkpoint", run, "--shards", b.shards, "--image-size", "99968"],
                    "--image-size: 99968 px crops from shards that store images of at most 40",
                ),
            ]
        ],
        *[
            (f"export_{name}", ["scripts/export.py", *args], 2, message)
            for name, args, message in [
                ("checkpoint_missing", ["--checkpoint", t / "no", "--out", t / "e"], "not exist"),
                ("checkpoint_long", ["--checkpoint", t / LONG, "--out", t / "e"], "300 bytes"),
                ("checkpoint_fifo", ["--checkpoint", b.fifo, "--out", t / "e"], "is a FIFO"),
                ("checkpoint_device", ["--checkpoint", "/dev/zero", "--out", t], "character"),
                ("out_file", ["--checkpoint", run, "--out", f], "--out: "),
                ("out_long", ["--checkpoint", run, "--out", t / LONG], "300 bytes"),
                ("out_through", ["--checkpoint", run, "--out", f / "e"], "is a file, not a"),
            ]
        ],
        # scripts/wheelhouse.py (refused before the package index is asked anything)
        *[
            (f"wheelhouse_{name}", ["scripts/wheelhouse.py", *args], 2, message)
            for name, args, message in [
                ("out_device", ["--out", "/dev/null"], "--out: /dev/null is a character device"),
                ("out_through", ["--out", f / "w"], "cannot be created: "),
                ("have_fifo", ["--out", t / "w", "--have", b.fifo], "it is a FIFO (named pipe)"),
                ("have_folder", ["--out", t / "w", "--have", t], "it is a folder"),
            ]
        ],
        # scripts/colorize.py: mistakes found before any work (2) ...
        *[
            (f"colorize_{name}", ["scripts/colorize.py", "--checkpoint", *args], 2, message)
            for name, args, message in [
                ("checkpoint_long", [t / LONG, b.photos, "--out", t / "c"], "300 bytes"),
                ("checkpoint_fifo", [b.fifo, b.photos, "--out", t / "c"], "is a FIFO"),
                ("input_long", [run, t / LONG, "--out", t / "c"], "input "),
                ("input_through", [run, f / "p.png", "--out", t / "c"], "cannot be reached"),
                ("out_file", [run, b.photos, "--out", f], f"--out: {f} is a file, not a folder"),
                ("out_through", [run, b.photos, "--out", f / "c"], "cannot be created"),
                ("out_long", [run, b.photos, "--out", t / LONG], "has a name of 300 bytes"),
                ("out_device", [run, b.photos, "--out", "/dev/null"], "character device"),
                (
                    "no_images",
                    [run, t / "no_images", "--out", t / "c"],
                    "no image or video files in",
                ),
                (
                    "render_size_huge",
                    [run, b.photos, "--out", t / "c", "--render-size", "99968"],
                    "--render-size: a batch of 3 at 99968 px needs about",
                ),
            ]
        ],
        # ... and inputs left without an output (1): FIFOs and devices skipped, not opened
        (
            "colorize_fifo_and_device_inputs",
            [
                "scripts/colorize.py",
                "--checkpoint",
                run,
                b.photos,
                b.fifo,
                "/dev/null",
                "--out",
                t / "coloured",
            ],  # fmt: skip
            1,
            "3 of 5 inputs have no output: 3 skipped",
        ),
        (
            "colorize_only_a_fifo",
            ["scripts/colorize.py", "--checkpoint", run, b.fifo, "--out", t / "c2"],
            1,
            "nothing was coloured: 1 skipped (e.g. ",
        ),
        (
            "colorize_nothing_written",
            ["scripts/colorize.py", "--checkpoint", run, b.photos / "p.png", "--out", b.blocked],
            1,
            "nothing was coloured: 1 not written (e.g. cannot write",
        ),
    ]
    return [
        (name, [str(a) for a in argv], status, message) for name, argv, status, message in cases
    ]


CASE_NAMES = [name for name, *_ in _cases(SimpleNamespace(tmp=Path("t"), file=Path("f"),
              fifo=Path("p"), socket=Path("s"), shards=Path("s"), photos=Path("p"),
              blocked=Path("b")))]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(bad) -> dict:
    """Every case, run by tests/bad_inputs.py in one limited subprocess."""
    cases = _cases(bad)
    listing = bad.tmp / "cases.json"
    listing.write_text(json.dumps([{"name": n, "argv": argv} for n, argv, _, _ in cases]))
    proc = run_limited("tests/bad_inputs.py", listing, timeout=240)  # a FIFO opened: a hang
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    return {name: (results[name], status, message) for name, _, status, message in cases}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_mistake_is_one_line_and_no_traceback(outcomes, name):
    result, status, message = outcomes[name]
    stderr = result["stderr"]
    assert result["status"] == status, f"{name}: status {result['status']}\n{stderr}"
    assert "Traceback" not in stderr + result["stdout"], stderr
    if status:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert message in lines[0], f"{message!r} not in {lines[0]!r}"


def test_resources_are_refused_before_anything_is_written(outcomes, bad):
    assert not (bad.tmp / "runs" / "x").exists()
    assert not (bad.tmp / "none").exists() and not (bad.tmp / "s").exists()


def test_colorize_skips_what_is_not_a_regular_file_and_writes_the_rest(outcomes, bad):
    result, _, _ = outcomes["colorize_fifo_and_device_inputs"]
    summary = json.loads(result["stdout"].strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["skipped"] == 3 and summary["failed"] == 0
    reasons = summary["skipped_files"]
    assert reasons[str(bad.fifo)] == "not a regular file (a FIFO (named pipe))"
    assert reasons["/dev/null"] == "not a regular file (a character device)"
    assert reasons[str(bad.photos / "more" / "pipe.jpg")].startswith("not a regular file")
    assert (bad.tmp / "coloured" / "p.png").is_file()
    assert (bad.tmp / "coloured" / "more" / "q.png").is_file()
    blocked = outcomes["colorize_nothing_written"][0]
    assert json.loads(blocked["stdout"].strip().splitlines()[-1])["failed"] == 1


def test_a_requeued_finished_run_only_evaluates(outcomes):
    result, _, _ = outcomes["resume_auto_equal"]
    assert (
        "--resume auto: the checkpoint is at train.max_steps = 2; evaluating only"
        in (result["stdout"])
    )


def test_the_command_line_itself_exits_2_for_a_binary_config(bad):
    proc = run_limited("scripts/train.py", "--config", bad.tmp / "binary.yaml", timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --config: ") and "binary file" in proc.stderr


# -- the path checks themselves, where a subprocess adds nothing -----------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read and write any folder")
def test_folders_without_permission_are_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    (tmp_path / "secret.yaml").write_text("run: {}\n")
    (tmp_path / "secret.yaml").chmod(0)
    with pytest.raises(UserError, match="cannot be created in .*locked: permission denied"):
        output_folder(locked / "runs", "run.out_dir")
    with pytest.raises(UserError, match="cannot be written: permission denied"):
        output_folder(locked, "--out")
    with pytest.raises(UserError, match="permission denied"):
        read_text_file(tmp_path / "secret.yaml", "--config")
    locked.chmod(0)
    with pytest.raises(UserError, match="cannot be read: permission denied"):
        input_folder(locked, "data.shards")
    from distcolor.infer.files import plan_jobs

    with pytest.raises(UserError, match="^input .*locked cannot be read: permission denied"):
        plan_jobs([locked], tmp_path / "coloured")


def test_permission_messages(tmp_path, monkeypatch):
    """The same refusals as root would meet them (os.access answers as for a user)."""
    monkeypatch.setattr(os, "access", lambda *_args, **_kw: False)
    with pytest.raises(UserError, match=r"^run.out_dir: .*r cannot be created in .*: permission"):
        output_folder(tmp_path / "r", "run.out_dir")
    with pytest.raises(UserError, match="^data.shards: .* cannot be read: permission denied$"):
        input_folder(tmp_path, "data.shards")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("fifo", "is a FIFO (named pipe), not a file"),
        ("binary", "is a binary file, not text"),
        ("list", "is not a JSON object of settings"),
        ("deep", "is not a readable JSON file"),
        ("folder", "is a folder, not a file"),
    ],
)
def test_a_deepspeed_config_that_is_not_one_is_one_line(tmp_path, kind, message):
    from distcolor.backends.deepspeed_config import deepspeed_config
    from distcolor.config import load_config

    path = tmp_path / "ds.json"
    if kind == "fifo":
        os.mkfifo(path)  # read, it would block for ever
    elif kind == "folder":
        path.mkdir()
    else:
        data = {"binary": b"\0\1\2", "list": b"[1, 2]", "deep": b"[" * 100_000}[kind]
        path.write_bytes(data)
    cfg = load_config(None, [f"deepspeed.config={path}"])
    with pytest.raises(UserError, match=f"^deepspeed.config: .*{re.escape(message)}"):
        deepspeed_config(cfg, world=2, precision=None)
