"""Faults in real processes (issue 18): kills, errors, full disks, signals, lost ranks,
competing writers. Nothing is mocked: runs are launched as a user or a cluster would
(scripts/*.py, torchrun), faults are injected by tests/fault_inject.py or from outside,
and after every fault no process of the run may be left (tests/fault_tools.py finds them
by a marker in their environment).

Three cheap tests run by default (about 15 s); the rest are marked `faults` (`python -m
pytest -m faults`, about 4 minutes on 2 cores when nothing hangs). benchmarks/fault_suite.py
repeats these kinds at other moments and adds 200 bad inputs.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests import fault_tools as ft

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds a run's processes through /proc"
)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> ft.FaultContext:
    root = tmp_path_factory.mktemp("faults")
    return ft.FaultContext(root / "work", root / "logs")


def passed(case: ft.Case, ctx: ft.FaultContext) -> bool:
    """Assert helper: the case's problems and where its logs are, in the failure."""
    assert case.ok, f"{case.name}: {case.problems} (logs: {ctx.case_logs(case)})"
    return True


# -- default run (about 15 s) ------------------------------------------------------------


def test_an_error_with_loader_workers_ends_every_process_within_the_bound(ctx):
    """An unexpected exception (not a user mistake) in a run with 2 loader workers: a
    non-zero exit with the error shown, within the bound, nothing left running, and the
    checkpoint of step 2 intact."""
    case = ft.injected(ctx, ft.SINGLE, "raise-3", ["--step-raise", 3], expect="error",
                       resume=False)  # fmt: skip
    assert passed(case, ctx) and case.rc == 1


def test_kill_9_of_the_trainer_takes_its_workers_fork_server_and_resource_tracker(ctx):
    case = ft.injected(ctx, ft.SINGLE, "kill-2", ["--step-kill", 2], expect="kill",
                       resume=False)  # fmt: skip
    assert passed(case, ctx) and case.rc == -signal.SIGKILL


# -- pytest -m faults ----------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("how", ["self", "outside"])
def test_kill_9_at_a_step_resumes_bitwise(ctx, how):
    if how == "self":
        case = ft.injected(ctx, ft.SINGLE, "kill-6", ["--step-kill", 6], expect="kill")
    else:
        case = ft.external_kill(ctx, ft.SINGLE, "kill-after-5", 5)
    assert passed(case, ctx) and case.bitwise


@pytest.mark.faults
@pytest.mark.parametrize(
    "point, inject",
    [
        ("mid-write", ["--save-kill", 4]),  # half of state.pt on disk
        ("before-marker", ["--save-kill-after", 4]),  # state.pt whole, no COMPLETE
        ("before-rename", ["--rename-kill", r"/step-00000004$"]),  # staged and marked
    ],
)
def test_kill_9_inside_a_checkpoint_write_keeps_the_previous_and_resumes_bitwise(
    ctx, point, inject
):
    case = ft.injected(ctx, ft.SINGLE, f"ckpt-{point}", inject, expect="kill")
    assert passed(case, ctx) and case.bitwise
    assert "resumed from step 2" in case.notes  # the checkpoint before the cut one


@pytest.mark.faults
@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_in_one_rank_ends_every_process_of_the_run(ctx, rank):
    case = ft.injected(ctx, ft.RANKS, f"raise-rank{rank}", ["--step-raise", 3], rank=rank,
                       expect="error")  # fmt: skip
    assert passed(case, ctx) and case.bitwise


@pytest.mark.faults
def test_a_hung_rank_is_named_once_the_collective_timeout_ends(ctx):
    """Rank 1 stops answering at step 3: rank 0's collective times out after
    train.collective_timeout_s, it says which rank went silent, and the launcher ends the
    rest (a hung rank ignores its SIGTERM: the launcher's grace, then SIGKILL)."""
    case = ft.injected(ctx, ft.RANKS, "hang-rank1", ["--step-hang", 3], rank=1, expect="peer",
                       **{"train.collective_timeout_s": 10})  # fmt: skip
    assert passed(case, ctx) and case.bitwise


@pytest.mark.faults
def test_kill_9_of_one_rank_under_torchrun_ends_every_process_of_the_run(ctx):
    case = ft.external_kill(ctx, ft.RANKS, "kill-rank1", 3, rank=1)
    assert passed(case, ctx) and case.bitwise


@pytest.mark.faults
def test_a_full_disk_is_one_error_line_and_keeps_the_previous_checkpoint(ctx):
    """A 40 MB tmpfs as run.out_dir: the first 37 MB checkpoint fits, the second cannot."""
    case = ft.disk_full(ctx, "tmpfs-40m", 40)
    if any(note.startswith("skipped") for note in case.notes):
        pytest.skip(case.notes[0])
    assert passed(case, ctx) and case.rc == 2


@pytest.mark.faults
def test_an_injected_enospc_is_one_error_line_and_resumes_bitwise(ctx):
    """The same without a mount (where a tmpfs is not permitted): ENOSPC from the write."""
    case = ft.injected(ctx, ft.SINGLE, "enospc-4", ["--save-enospc", 4], expect="enospc")
    assert passed(case, ctx) and case.bitwise


@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_group_stops_with_a_checkpoint_and_resumes_bitwise(ctx, sig):
    case = ft.stop_signal(ctx, ft.SINGLE, sig.name, sig, 3)
    assert passed(case, ctx) and case.rc == 0 and case.bitwise


@pytest.mark.faults
def test_a_second_ctrl_c_exits_130_with_one_line(ctx):
    case = ft.stop_signal(ctx, ft.SINGLE, "SIGINT-twice", signal.SIGINT, 3, twice=True)
    assert passed(case, ctx)


@pytest.mark.faults
def test_a_killed_loader_worker_ends_the_run(ctx):
    case = ft.external_kill(ctx, ft.SINGLE, "kill-worker", 1, target="worker")
    assert passed(case, ctx)


@pytest.mark.faults
@pytest.mark.parametrize("resume", [False, True])
def test_a_second_trainer_on_the_same_run_is_refused_with_one_line(ctx, resume):
    case = ft.second_trainer(ctx, ft.SINGLE, f"second-{'resume' if resume else 'fresh'}",
                             resume=resume)  # fmt: skip
    assert passed(case, ctx)


@pytest.mark.faults
def test_a_second_make_shards_into_the_same_folder_is_refused_with_one_line(ctx):
    assert passed(ft.make_shards_twice(ctx, "make-shards-twice"), ctx)


@pytest.mark.faults
@pytest.mark.parametrize(
    "name, regex, exchange",
    [
        ("while-writing", r"\.tar$@3", True),
        ("after-exchange", r"\.trash$", True),
        ("no-exchange-gap", r"/no-exchange-gap$", False),
    ],
)
def test_make_shards_overwrite_killed_keeps_a_complete_set(ctx, name, regex, exchange):
    regex, _, nth = regex.partition("@")
    case = ft.publish_kill(ctx, name, regex, int(nth or 1), exchange=exchange)
    assert passed(case, ctx)


@pytest.mark.faults
def test_make_shards_on_a_full_disk_is_one_error_line(ctx):
    case = ft.make_shards_disk_full(ctx, "make-shards-1m")
    if any(note.startswith("skipped") for note in case.notes):
        pytest.skip(case.notes[0])
    assert passed(case, ctx)


def test_the_fault_tools_find_a_runs_processes_by_their_marker(tmp_path):
    """The harness itself: a child and its grandchild are found, and gone after a kill."""
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
           "'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"  # fmt: skip
    proc = ft.Proc("sleeper", [sys.executable, "-c", code], logs=Path(tmp_path))
    assert proc.wait_for("^up$", timeout=30)
    deadline = time.monotonic() + 10
    while len(ft.marked_pids(proc.marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ft.marked_pids(proc.marker)) == 2
    ended = proc.finish(bound=0.5)
    assert ended.hung and ft.marked_pids(proc.marker) == []
