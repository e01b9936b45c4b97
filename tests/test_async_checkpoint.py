"""Background checkpoint writes: the same bytes as a synchronous save, one write at a time,
failures as one line, and a kill -9 mid-write never leaves a complete-looking checkpoint."""

import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from distcolor.checkpoint import (
    MARKER,
    STATE,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    staging_path,
)
from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.train import async_checkpoint
from distcolor.train.async_checkpoint import CheckpointWriter, snapshot_state
from distcolor.train.loop import train
from tests.conftest import reset_accelerate, tiny_overrides
from tests.helpers import TRAINING_STATE, assert_bitwise_equal, copy_stopped_at, run_script

ROOT = Path(__file__).resolve().parents[1]


def live_state(step: int):
    """A trainer-like state over live objects: a module's state dict (an OrderedDict with
    _metadata), Adam's state, views sharing one storage, one dict referenced twice."""
    torch.manual_seed(step)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 1, 8, 8)).square().mean().backward()
    opt.step()
    base = torch.arange(12.0)
    shared = {"epoch": 1, "name": "x"}
    state = {
        "step": step,
        "G": net.state_dict(),
        "steps": {"optimizer": opt.state_dict(), "scaler": None},
        "views": [base[2:5], base[::3], base.view(3, 4).t()],
        "loader": [shared, shared],
        "rng": [{"torch": torch.get_rng_state()}],
        "empty": (torch.empty(0), torch.zeros(0, dtype=torch.int64)),
        "size": torch.Size([2, 3]),
    }
    return state, net, base


def test_background_write_is_byte_identical_and_immune_to_training(tmp_path):
    writer = CheckpointWriter(tmp_path / "async", keep_last=2)
    with writer:
        for step in (1, 2):  # the second reuses the first one's host buffers
            state, net, base = live_state(step)
            save_checkpoint(state, tmp_path / "sync", step=step, keep_last=2)
            writer.save(state, step=step)
            with torch.no_grad():  # training goes on at once, in place
                for p in net.parameters():
                    p.add_(1.0)
                base.mul_(-1)
            writer.wait()
            sync = (checkpoint_path(tmp_path / "sync", step) / STATE).read_bytes()
            background = (checkpoint_path(tmp_path / "async", step) / STATE).read_bytes()
            assert background == sync
            assert writer.last["snapshot_bytes"] > 0 and writer.last["write_s"] > 0
    # The second snapshot went into the first one's buffers (same sizes): no new memory.
    assert writer.buffers.nbytes == writer.last["snapshot_bytes"]
    assert [p.name for p in list_checkpoints(tmp_path / "async")] == [
        "step-00000001",
        "step-00000002",
    ]
    copied, ready, _ = snapshot_state(state)
    ready()
    assert copied["loader"][0] is copied["loader"][1]  # shared objects stay shared
    assert copied["views"][0].untyped_storage().data_ptr() == (
        copied["views"][1].untyped_storage().data_ptr()
    )


def test_one_write_at_a_time_and_a_new_save_waits(tmp_path, monkeypatch):
    running, overlap, order = [], [], []
    gate = threading.Event()

    def slow_save(state, directory, *, step, keep_last, keep_every=None):
        running.append(step)
        overlap.append(len(running))
        if step == 1:
            assert gate.wait(10)
        order.append(step)
        running.remove(step)

    monkeypatch.setattr(async_checkpoint, "save_checkpoint", slow_save)
    writer = CheckpointWriter(tmp_path, keep_last=2)
    writer.save({"w": torch.ones(2)}, step=1)
    assert writer.busy
    threading.Timer(0.3, gate.set).start()
    start = time.perf_counter()
    writer.save({"w": torch.ones(2)}, step=2)  # waits for step 1's write
    assert time.perf_counter() - start >= 0.25
    writer.wait()
    assert order == [1, 2] and max(overlap) == 1 and not writer.busy


def test_a_disk_full_write_is_one_line_and_leaves_nothing_complete(tmp_path, monkeypatch):
    writer = CheckpointWriter(tmp_path, keep_last=3)
    writer.save({"w": torch.ones(2)}, step=1)
    writer.wait()
    real_save = torch.save

    def full_disk(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    writer.save({"w": torch.ones(2)}, step=2)
    with pytest.raises(UserError) as caught:
        writer.wait()
    message = str(caught.value)
    assert re.fullmatch(
        rf"disk full: the checkpoint of step 2 needs about 0\.0 MB in {re.escape(str(tmp_path))}, "
        r"[\d,.]+ MB free; free some space \(or point run\.out_dir elsewhere\), then continue "
        r"with --resume",
        message,
    ), message
    assert not staging_path(tmp_path, 2).exists()  # the partial file is cleared away
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    monkeypatch.setattr(torch, "save", real_save)
    writer.wait()  # reported once
    with writer:  # the writer keeps working once the disk has room again
        writer.save({"w": torch.ones(2)}, step=3)
    assert torch.equal(load_checkpoint(checkpoint_path(tmp_path, 3))["w"], torch.ones(2))


def test_an_error_already_raised_is_not_replaced_by_a_failed_write(tmp_path, monkeypatch):
    logged = []

    def broken(obj, path):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyError, match="original"):
        with CheckpointWriter(tmp_path, keep_last=1, log=logged.append) as writer:
            writer.save({"w": torch.ones(1)}, step=1)
            raise KeyError("original")
    assert logged == [
        f"warning: checkpoint of step 1 could not be written to {tmp_path}: [Errno 13] "
        "Permission denied"
    ]


RUN = {"train.max_steps": 4, "train.eval_images": 0, "train.ckpt_every": 2}


def test_async_and_sync_runs_save_the_same_state_and_resume_exactly(tmp_path, tiny_shards):
    """The trainer's default (background writes) against synchronous saves, tensor by
    tensor; then a resume from a background-written checkpoint, bit for bit."""
    runs = {}
    for name, flag in (("sync", "false"), ("async", "true")):
        extra = {**RUN, "run.name": name, "train.async_checkpoint": flag}
        runs[name] = load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra))
        train(runs[name])
        reset_accelerate()
    for step in (2, 4):
        a = load_checkpoint(checkpoint_path(runs["sync"].run_dir / "checkpoints", step))
        b = load_checkpoint(checkpoint_path(runs["async"].run_dir / "checkpoints", step))
        assert a.pop("config")["train"]["async_checkpoint"] is False
        assert b.pop("config")["train"]["async_checkpoint"] is True
        assert_bitwise_equal(a, b, f"step {step}")
    # Stopped after step 2 (its background-written checkpoint), resumed to step 4.
    copy_stopped_at(runs["async"].run_dir, tmp_path / "runs" / "resumed", drop_steps=[4])
    extra = {**RUN, "run.name": "resumed"}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **extra)), resume=True)
    a = load_checkpoint(checkpoint_path(runs["sync"].run_dir / "checkpoints", 4))
    b = load_checkpoint(checkpoint_path(tmp_path / "runs/resumed/checkpoints", 4))
    for key in (*TRAINING_STATE, "rng", "loader"):
        assert_bitwise_equal(a[key], b[key], key)


def block_checkpoint(run_dir: Path, step: int) -> None:
    """Make step `step`'s staging folder impossible to create (a file holds its name)."""
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    staging_path(ckpts, step).write_text("in the way")


def test_a_failed_background_write_stops_the_run_at_the_next_checkpoint(tmp_path, tiny_shards):
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **{**RUN, "train.max_steps": 3}))
    block_checkpoint(cfg.run_dir, 2)
    with pytest.raises(UserError) as caught:
        train(cfg)
    message = str(caught.value)
    assert message.startswith("checkpoint of step 2 could not be written to ")
    assert "File exists" in message and "\n" not in message
    assert list_checkpoints(cfg.run_dir / "checkpoints") == []
    assert not checkpoint_path(cfg.run_dir / "checkpoints", 3).exists()


def test_a_failed_last_write_is_one_line_from_the_cli(tmp_path, tiny_shards):
    args = tiny_overrides(tmp_path, tiny_shards, **{**RUN, "train.max_steps": 2})
    block_checkpoint(tmp_path / "runs/tiny", 2)
    proc = run_script("scripts/train.py", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: checkpoint of step 2 could not be written to ")
    assert sum(line.startswith("error:") for line in lines) == 1
    assert list_checkpoints(tmp_path / "runs/tiny/checkpoints") == []
    assert "checkpoints:" not in proc.stdout  # no end-of-run report after a lost checkpoint


WRITE_BIG = """
import sys, torch
from distcolor.train.async_checkpoint import CheckpointWriter
from distcolor.checkpoint import load_checkpoint
ckpts, source = sys.argv[1], sys.argv[2]
state = load_checkpoint(source)
state["step"] = 4
state["pad"] = torch.zeros(64 * 2**20)  # 256 MB: a write that takes a while
writer = CheckpointWriter(ckpts, keep_last=3)
writer.save(state, step=4)
print("writing", flush=True)
writer.wait()
print("done", flush=True)
"""


def test_kill_9_during_a_background_write_leaves_the_previous_checkpoint(
    tmp_path, tiny_shards, capsys
):
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_shards, **{**RUN, "train.max_steps": 2}))
    train(cfg)
    reset_accelerate()
    ckpts = cfg.run_dir / "checkpoints"
    staging = staging_path(ckpts, 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITE_BIG, str(ckpts), str(checkpoint_path(ckpts, 2))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (staging / STATE).exists():  # torch.save has opened the file
            assert proc.poll() is None and time.monotonic() < deadline, "no write started"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and "done" not in out
    # Killed mid-write (not after): the staging folder is there, its marker is not.
    assert staging.is_dir() and not (staging / MARKER).exists()
    assert not checkpoint_path(ckpts, 4).exists()
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-00000002"]
    capsys.readouterr()
    more = {**RUN, "train.max_steps": 3}
    train(load_config(None, tiny_overrides(tmp_path, tiny_shards, **more)), resume=True)
    assert "step-00000002 (step 2)" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-00000002", "step-00000003"]
    assert not staging.exists()  # the next write cleared the remains


@pytest.mark.gpu  # run by `pytest -m gpu` (benchmarks/gpu_suite.py)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_snapshot_goes_through_reused_pinned_buffers(tmp_path):
    net = nn.Conv2d(1, 4, 3).cuda()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 1, 8, 8, device="cuda")).sum().backward()
    opt.step()
    writer = CheckpointWriter(tmp_path, keep_last=2)
    with writer:
        for step in (1, 2):
            state = {"G": net.state_dict(), "opt": opt.state_dict(), "cpu": torch.ones(3)}
            expected = {k: v.cpu().clone() for k, v in net.state_dict().items()}
            writer.save(state, step=step)
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(1.0)
            writer.wait()
            saved = load_checkpoint(checkpoint_path(tmp_path, step))
            assert_bitwise_equal(saved["G"], expected, "G")
    buffers = [b for b, pinned in writer.buffers._buffers if pinned]
    assert buffers and all(b.is_pinned() for b in buffers)
