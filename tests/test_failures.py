"""How a script ends on a failure (distcolor.errors.run_main, distcolor.failures): one
line for the failures a user can act on, the traceback kept for the rest, the documented
exit codes, a bounded exit whatever is left running, and a peer rank named.

Processes are real: scripts run through run_main in a child Python, and the 2-rank cases
under torchrun with gloo on loopback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from torch import nn

from distcolor import failures
from distcolor.checkpoint import load_parts
from distcolor.errors import UserError
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


# -- describe: one line for a known failure ------------------------------------------------


def test_a_full_disk_names_the_file_the_free_space_and_what_to_do(tmp_path):
    err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "state.pt"))
    line = failures.describe(err, "free some space, then run it again")
    assert line.startswith(f"disk full: could not write {tmp_path / 'state.pt'} (")
    assert " MB free there); free some space, then run it again" in line


def test_a_full_disk_deep_in_a_chain_is_still_found():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("writing failed") from inner
    except RuntimeError as err:
        line = failures.describe(err)
    assert line == f"disk full: [Errno {errno.EDQUOT}] Disk quota exceeded; " + (
        failures.DISK_FULL_ADVICE
    )


@pytest.mark.parametrize(
    "err",
    [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")],
)
def test_out_of_memory_is_one_line_with_what_to_lower(err):
    line = failures.describe(err)
    assert line.startswith("out of memory") and "data.batch_size" in line
    assert "\n" not in line


def test_a_lost_peer_is_one_line_without_gloos_source_path():
    err = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[127.0.0.1]:29500. This is typically caused by a crash of the peer"
    )
    line = failures.describe(err)
    assert failures.lost_peer(err)
    assert line.startswith("lost contact with another rank")
    assert line.endswith(": Connection closed by peer [127.0.0.1]:29500")


def test_glooss_own_timeout_counts_as_a_silent_peer():
    err = RuntimeError("Application timeout caused pair closure")
    assert failures.lost_peer(err)
    assert failures.describe(err).startswith("a collective timed out: another rank stopped")


@pytest.mark.parametrize(
    "err", [ValueError("bad"), RuntimeError("shape mismatch"), OSError(errno.EACCES, "denied")]
)
def test_anything_else_is_not_described_so_its_traceback_is_kept(err):
    assert failures.describe(err) is None
    assert not failures.lost_peer(err)


def test_a_checkpoint_of_another_model_names_the_tensor_and_the_changed_setting(tmp_path):
    saved = {"G": nn.Sequential(nn.Conv2d(1, 16, 3), nn.Conv2d(16, 2, 1)).state_dict()}
    now = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 2, 1))
    changed = ["model.generator.width 16 -> 8"]
    with pytest.raises(UserError) as caught:
        load_parts(saved, {"G": now}, tmp_path / "step-00000010", changed)
    line = str(caught.value)
    assert "\n" not in line
    assert (
        "does not fit this config (size mismatch for 0.weight: checkpoint [16, 1, 3, 3], "
        "this config [8, 1, 3, 3], and 2 more); model settings changed since: "
        "model.generator.width 16 -> 8; resume with the model settings"
    ) in line


# -- run_main: exit codes, one line, a bounded exit ----------------------------------------


def _run(body: str, tmp_path: Path, timeout: float = 60, **env) -> tuple[int, str, float]:
    """`body` (defining main) run through run_main in a child; (exit code, stderr, seconds)."""
    script = tmp_path / "script.py"
    script.write_text(
        "import errno, os, sys, threading, time\n"
        "from distcolor.errors import UserError, run_main\n"
        + textwrap.dedent(body)
        + "\nrun_main(main)\n"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.mark.parametrize(
    "raise_, code, line",
    [
        ("raise UserError('data.shards: folder x does not exist')", 2,
         "error: data.shards: folder x does not exist"),
        ("raise KeyboardInterrupt", 130, "interrupted"),
        ("raise OSError(errno.ENOSPC, 'No space left on device')", 1,
         "error: disk full: [Errno 28] No space left on device; free some space (or write "
         "elsewhere), then run it again"),
    ],
)  # fmt: skip
def test_known_failures_are_one_line_with_their_exit_code(tmp_path, raise_, code, line):
    rc, err, _ = _run(f"def main():\n    {raise_}\n", tmp_path)
    assert (rc, err.strip().splitlines()) == (code, [line])


def test_an_unknown_error_keeps_its_traceback_and_exits_1(tmp_path):
    rc, err, _ = _run("def main():\n    raise ValueError('a bug')\n", tmp_path)
    assert rc == 1
    assert "Traceback (most recent call last)" in err and err.strip().endswith("a bug")


def test_an_error_ends_the_process_even_if_a_thread_would_keep_it_alive(tmp_path):
    """A non-daemon thread that never ends used to hold the process after its traceback
    (as loader workers that ignored SIGTERM did): the exit watchdog ends it."""
    body = """
    def main():
        threading.Thread(target=time.sleep, args=(3600,)).start()
        raise OSError(errno.ENOSPC, "No space left on device")
    """
    rc, err, seconds = _run(body, tmp_path, DISTCOLOR_EXIT_GRACE_S="2")
    lines = err.strip().splitlines()
    assert rc == 1 and seconds < 30
    assert lines[0].startswith("error: disk full")
    assert lines[1] == "error: still running 2 s after the error; ending now"


def test_a_caller_that_catches_the_exit_keeps_running_past_the_grace_time(tmp_path):
    """The exit watchdog counts from the interpreter's shutdown, not from the error: a
    caller running a script's main in its own process (as tests do) and going on is not
    killed later, and its own exit stays bounded."""
    body = """
    def main():
        raise UserError("a mistake")

    try:
        run_main(main)
    except SystemExit as stop:
        print(f"caught {stop.code}", file=sys.stderr, flush=True)
    time.sleep(3)  # beyond the grace of 1 s
    print("still here", file=sys.stderr, flush=True)
    threading.Thread(target=time.sleep, args=(3600,)).start()
    sys.exit(0)
    """
    (tmp_path / "caller.py").write_text(
        "import sys, threading, time\nfrom distcolor.errors import UserError, run_main\n"
        + textwrap.dedent(body)
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(tmp_path / "caller.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DISTCOLOR_EXIT_GRACE_S": "1"},
    )
    lines = done.stderr.strip().splitlines()
    assert lines[:3] == ["error: a mistake", "caught 2", "still here"], done.stderr
    # its own exit then hangs on the thread: the watchdog ends it, with the error's status
    assert lines[3] == "error: still running 1 s after the error; ending now"
    assert done.returncode == 2 and time.monotonic() - start < 30


# -- two ranks: the one that failed first is named ---------------------------------------

_RANKS = """
import datetime, os, signal, sys, time
import torch
import torch.distributed as dist
from distcolor.errors import run_main

def main():
    if sys.argv[1] == "fail":  # as the trainer: a SIGTERM finishes the step, which fails
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=4))
    rank = dist.get_rank()
    if rank == 1 and sys.argv[1] == "fail":
        raise OSError(28, "No space left on device", "/data/run/state.pt")
    if rank == 1 and sys.argv[1] == "hang":
        time.sleep(3600)
    time.sleep(1.0 if sys.argv[1] == "fail" else 0)  # let rank 1 fail (and say so) first
    dist.all_reduce(torch.ones(4))
    dist.all_reduce(torch.ones(4))

run_main(main)
"""


def _torchrun(tmp_path: Path, how: str) -> tuple[int, str]:
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), how],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DISTCOLOR_EXIT_GRACE_S": "10"},
    )  # fmt: skip
    return done.returncode, done.stderr


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_the_rank_that_failed_first_is_named_by_the_ones_that_lost_it(tmp_path):
    rc, err = _torchrun(tmp_path, "fail")
    errors = _errors(err)
    assert rc != 0
    assert "error: disk full: could not write /data/run/state.pt" in errors[0], err[-2000:]
    assert any(
        line.startswith("error: rank 1 failed first (disk full: could not write /data/run/")
        and line.endswith("this rank lost contact with it")
        for line in errors[1:]
    ), err[-2000:]


def test_a_silent_rank_is_named_after_the_collective_timeout(tmp_path):
    rc, err = _torchrun(tmp_path, "hang")
    assert rc != 0
    assert any(
        line.startswith("error: a collective timed out: rank 1 stopped answering")
        for line in _errors(err)
    ), err[-2000:]
