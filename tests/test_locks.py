"""One writer per folder (distcolor/locks.py), with real processes: a second writer is
refused with one line naming the first, a dead holder's lock is taken over, and the
trainer takes its run's lock before it writes anything."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.locks import folder_lock, lock_path, run_lock
from tests.conftest import tiny_overrides
from tests.helpers import run_script

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import os, sys, time
from distcolor.locks import folder_lock, run_lock
folder, how = sys.argv[1], sys.argv[2]
held = run_lock(folder) if how == "run" else folder_lock(folder, name=folder, purpose=how)
with held:
    if os.environ.get("FORK_AND_EXIT") and os.fork():
        os._exit(0)  # the child keeps the lock: a leftover process
    print("held", os.getpid(), flush=True)
    time.sleep(120)
"""


def hold(folder: Path, how: str, **env: str) -> tuple[subprocess.Popen, int]:
    """A process holding `folder`'s lock ("run": the trainer's run lock; else a purpose),
    and the pid of the one holding it (another with FORK_AND_EXIT)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), how],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    word, pid = proc.stdout.readline().split()
    assert word == "held"
    return proc, int(pid)


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(
    tmp_path,
):
    folder = tmp_path / "shards" / "set"
    holder, _ = hold(folder, "a shard build")
    try:
        with pytest.raises(UserError) as err:
            with folder_lock(folder, name=f"--out {folder}", purpose="a shard build"):
                pass
        line = str(err.value)
        assert "\n" not in line
        assert line.startswith(f"--out {folder} is in use by a shard build, ")
        assert f"pid {holder.pid} on {socket.gethostname()}, started 20" in line
        assert f"python -c {folder} 'a shard build'; one writer at a time" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock; its file (and details) is taken over.
    assert str(holder.pid) in lock_path(folder).read_text()
    with folder_lock(folder, name="--out", purpose="a shard build"):
        assert f'"pid": {os.getpid()},' in lock_path(folder).read_text()
    assert not lock_path(folder).exists()  # released: nothing left behind


def test_a_lock_kept_by_a_leftover_child_says_its_starter_exited(tmp_path):
    parent, child = hold(tmp_path / "set", "a shard build", FORK_AND_EXIT="1")
    try:
        parent.wait()  # gone (not a zombie); its child holds the lock on
        with pytest.raises(UserError, match=rf"pid {parent.pid} on .* \(exited; a process it"):
            with folder_lock(tmp_path / "set", name="x", purpose="y"):
                pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_trainer_is_refused_before_it_writes_anything(tmp_path):
    synthetic = tmp_path / "synthetic"  # the trainer would build its data here first
    overrides = tiny_overrides(
        tmp_path, synthetic, **{"data.synthetic.count": 12, "data.synthetic.size": 32}
    )
    cfg = load_config(None, overrides)
    run = cfg.run_dir
    (run / "checkpoints" / ".step-00000004.tmp").mkdir(parents=True)  # the first's write
    (run / "config.yaml").write_text("the first trainer's config\n")
    holder, _ = hold(run, "run")
    try:
        from distcolor.train.loop import train

        with pytest.raises(UserError) as err:
            train(cfg)
        line = str(err.value)
        assert line.startswith(f"run folder {run} is in use by a training run, pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert (run / "config.yaml").read_text() == "the first trainer's config\n"
    assert (run / "checkpoints" / ".step-00000004.tmp").is_dir()
    assert not synthetic.exists() and not synthetic.with_name(".synthetic.partial").exists()


def test_a_trainer_waits_for_a_build_of_its_synthetic_data_instead_of_a_second_one(tmp_path):
    from distcolor.config import SyntheticConfig
    from distcolor.data.shards import ensure_shards

    folder = tmp_path / "synthetic"
    holder, _ = hold(folder, "a shard build")
    logs, result = [], {}
    synthetic = SyntheticConfig(count=10, size=32, shard_size=4)
    waiter = threading.Thread(
        target=lambda: result.update(ensure_shards(folder, synthetic, log=logs.append))
    )
    waiter.start()
    try:
        deadline = time.monotonic() + 30
        while not logs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert logs[0].startswith(f"waiting for a shard build, pid {holder.pid} on ")
        assert logs[0].endswith(f"to finish writing {folder}")
    finally:
        holder.kill()  # the build "ends" without a set: the waiter builds it
        holder.wait()
        waiter.join(60)
    assert result["splits"]["train"]["count"] + result["splits"]["test"]["count"] == 10


def test_only_the_main_process_takes_the_run_lock(tmp_path, monkeypatch):
    for rank, takes in [("1", False), ("0", True)]:
        monkeypatch.setenv("RANK", rank)
        with run_lock(tmp_path / "run"):
            assert lock_path(tmp_path / "run").exists() == takes


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.faults
def test_two_trainers_on_one_run_and_a_killed_ones_run_resumed(tmp_path, tiny_shards):
    """The real thing, three `scripts/train.py`: the second is refused while the first
    trains (its config and checkpoints untouched); after kill -9 of the first, a third
    takes the stale lock over and resumes the run."""
    first = tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": 100000})
    run = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen(
        [sys.executable, "scripts/train.py", *first],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(run / "checkpoints" / "step-00000002", timeout=240)
        config = (run / "config.yaml").read_bytes()
        second = run_script("scripts/train.py", *first, "model.generator.width=16", timeout=240)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith(
            f"error: run folder {run} is in use by a training run, pid {proc.pid} on "
        )
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert (run / "config.yaml").read_bytes() == config
        assert proc.poll() is None  # the first trains on
        checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = int(checkpoints[-1].removeprefix("step-"))
    third = run_script(
        "scripts/train.py", "--resume", *first, f"train.max_steps={done + 2}", timeout=240
    )
    assert third.returncode == 0, third.stderr
    assert (run / "eval.json").exists()
    assert not lock_path(run).exists()
