"""make_shards --overwrite killed (SIGKILL, real processes) inside its publish: `--out`
always holds a complete, readable set (the old one until the new one is complete), and
the next build or trainer cleans up and completes (distcolor/data/publish.py)."""

import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from distcolor.data.catalog import shard_list
from distcolor.data.publish import sibling
from distcolor.data.shard_build import build_shards
from distcolor.data.shards import ensure_shards
from distcolor.errors import UserError
from distcolor.locks import lock_path
from distcolor.pause_points import PAUSE_VARIABLE
from tests.helpers import run_script

ROOT = Path(__file__).resolve().parents[1]
OLD = dict(synthetic=12, synthetic_size=32, size=32, shard_size=4)
NEW = dict(OLD, synthetic=16)


def cli_args(out: Path, options: dict) -> list[str]:
    return [
        "scripts/make_shards.py",
        f"--out={out}",
        f"--synthetic={options['synthetic']}",
        f"--synthetic-size={options['synthetic_size']}",
        f"--size={options['size']}",
        f"--shard-size={options['shard_size']}",
        "--readers=1",
        "--overwrite",
    ]


def paused_make_shards(out: Path, point: str, **env: str) -> subprocess.Popen:
    """`make_shards --overwrite` building NEW into `out`, stopped at pause point `point`."""
    proc = subprocess.Popen(
        [sys.executable, *cli_args(out, NEW)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), PAUSE_VARIABLE: point, **env},
    )
    line = proc.stderr.readline()
    assert line == f"paused at {point} (pid {proc.pid})\n", line + proc.stderr.read()
    return proc


def scenes_read(folder: Path) -> int:
    """Every image of the set at `folder`, read as the trainer finds it (ensure_shards,
    then each shard's JPEGs decoded); their number."""
    manifest = ensure_shards(folder, None)
    count = 0
    for split in ("train", "test"):
        for shard in shard_list(folder, manifest, split):
            with tarfile.open(shard.url) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".jpg"):
                        Image.open(io.BytesIO(tar.extractfile(member).read())).load()
                        count += 1
            assert shard.count > 0
    assert count == manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"]
    return count


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_make_shards_killed_in_its_publish_keeps_the_old_set_and_refuses_a_second(tmp_path):
    out = tmp_path / "set"
    build_shards(out, **OLD, log=lambda _: None)
    proc = paused_make_shards(out, "publish")  # the new set complete, about to swap
    try:
        with pytest.raises(UserError, match=f"^{out} is in use by a shard build, pid {proc.pid} "):
            build_shards(out, **NEW, overwrite=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert scenes_read(out) == 12  # the old set, whole
    assert build_shards(out, **NEW, overwrite=True, log=lambda _: None)["splits"]
    assert scenes_read(out) == 16
    assert leftovers(out) == []


@pytest.mark.parametrize("new_complete", [True, False])
def test_a_reader_puts_back_the_set_a_fallback_publish_left_without_a_folder(
    tmp_path, new_complete
):
    """The state a kill between the fallback's two renames leaves (the kill itself: the
    faults test below): no `out`, the old set at `.out.old`, the build at `.out.partial`."""
    out = tmp_path / "set"
    build_shards(out, **OLD, log=lambda _: None)
    build_shards(tmp_path / "new", **NEW, log=lambda _: None)
    os.rename(out, sibling(out, "old"))
    os.rename(tmp_path / "new", sibling(out, "partial"))
    if not new_complete:
        (sibling(out, "partial") / "manifest.json").unlink()
    assert scenes_read(out) == (16 if new_complete else 12)  # the trainer's ensure_shards
    assert leftovers(out) == ([] if new_complete else [".set.partial"])


def test_a_folder_holding_other_files_is_never_replaced(tmp_path):
    out = tmp_path / "set"
    build_shards(out, **OLD)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files that are not shards \(e.g. notes.txt\)"):
        build_shards(out, **NEW, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and scenes_read(out) == 12


@pytest.mark.faults
@pytest.mark.parametrize(
    "point, exchange, survivor",
    [
        ("publish", True, 12),
        ("publish-exchanged", True, 16),
        ("publish-trash", True, 16),
        ("publish", False, 12),
        ("publish-gap", False, 16),  # no --out at all: the next reader puts the new one back
        ("publish-trash", False, 16),
    ],
)
def test_make_shards_killed_at_each_point_of_its_publish(tmp_path, point, exchange, survivor):
    out = tmp_path / "set"
    build_shards(out, **OLD, log=lambda _: None)
    env = {} if exchange else {"DISTCOLOR_NO_RENAME_EXCHANGE": "1"}
    proc = paused_make_shards(out, point, **env)
    second = run_script(*cli_args(out, NEW))  # a second make_shards, as a user would
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.startswith(f"error: {out} is in use by a shard build, pid {proc.pid} ")
    assert second.stderr.count("\n") == 1
    assert lock_path(out).exists()  # stale: its holder was killed
    assert scenes_read(out) == survivor  # what a trainer finds: complete
    again = run_script(*cli_args(out, NEW))
    assert again.returncode == 0, again.stderr
    assert scenes_read(out) == 16
    assert leftovers(out) == []
    assert not sibling(out, "old").exists()
