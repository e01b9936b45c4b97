"""Fault injection in real processes, shared by tests/test_faults.py and
benchmarks/fault_suite.py.

Every launched run carries a unique marker in its environment (DISTCOLOR_FAULT_RUN=<uuid>).
Children inherit the environment, so the marker finds every process of the run, whoever
its parent is now (the loader workers, the multiprocessing fork server and resource
tracker, torchrun's ranks), including orphans that init has adopted. After a fault:

- hang: the launched process (the trainer, torchrun, make_shards) is still running
  EXIT_BOUND_S seconds after the fault;
- orphans: it ended, but another process of the run is alive at that bound;
- lost checkpoints: a checkpoint that was complete before the fault (seen by a watcher
  that hashes each complete checkpoint's state.pt as it appears, or recorded by
  tests/fault_inject.py just before its fault) is gone, incomplete or changed after it;
- resume: the run resumed (`--resume auto`) to the family's last step holds, bit for bit,
  the weights, averages, optimizers, scalers, loader positions and RNG of a straight run.

Each scenario returns a Case whose `problems` list says what went wrong (empty: passed).
Whatever a scenario leaves running is killed (SIGKILL by marker) before it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
MARKER_ENV = "DISTCOLOR_FAULT_RUN"
# From a fault to every process of the run gone. A trainer's exit guard and the workers'
# watchdog act within seconds; torchrun gives the surviving ranks its shutdown timeout
# (30 s by default) before SIGKILL. Override with DISTCOLOR_FAULT_BOUND_S.
EXIT_BOUND_S = float(os.environ.get("DISTCOLOR_FAULT_BOUND_S", "60"))
MEMORY_LIMIT = 4 << 30  # RLIMIT_AS of every launched process (inherited by its children)
NOISE = ("fault_inject:", "[WARNING] [real_accelerator.py")  # stderr lines that are ours


# -- processes of a run -------------------------------------------------------------


def new_marker() -> str:
    return uuid.uuid4().hex


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int]:
    """(state, ppid) of `pid`, ('', 0) when it is gone."""
    raw = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not raw:
        return "", 0
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def environ(pid: int) -> dict[str, str]:
    pairs = (item.partition(b"=") for item in _read(f"/proc/{pid}/environ").split(b"\0"))
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs if k}


def marked_pids(marker: str) -> list[int]:
    """Live (not zombie) processes whose environment carries `marker`."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and needle in _read(f"/proc/{entry.name}/environ").split(b"\0"):
            state, _ = _stat(int(entry.name))
            if state and state != "Z":
                found.append(int(entry.name))
    return sorted(found)


def describe(pid: int) -> str:
    state, ppid = _stat(pid)
    return f"pid {pid} (ppid {ppid}, {state}): {cmdline(pid)[:160]}"


def kill_marked(marker: str) -> None:
    """SIGKILL every process of the run (clean-up after a check, never a check itself)."""
    for _ in range(3):
        pids = marked_pids(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def rank_pid(marker: str, rank: int) -> int | None:
    """The trainer process of `rank` (a torchrun worker: RANK set, the script on its
    command line, not a fork server or a worker forked from one)."""
    for pid in marked_pids(marker):
        line = cmdline(pid)
        if "train.py" in line and "torch.distributed.run" not in line:
            if environ(pid).get("RANK", "0") == str(rank):
                return pid
    return None


def loader_workers(marker: str) -> list[int]:
    """Processes forked from the run's multiprocessing fork server (loader workers)."""
    pids = marked_pids(marker)
    servers = {p for p in pids if "forkserver" in cmdline(p) and "forkserver" not in
               cmdline(_stat(p)[1])}  # fmt: skip
    return [p for p in pids if _stat(p)[1] in servers]


def signal_groups(marker: str, sig: int) -> int:
    """Send `sig` to every process group of the run (as SLURM signals a whole job, or a
    terminal its foreground group); returns how many groups."""
    groups = set()
    for pid in marked_pids(marker):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
    return len(groups)


def run_env(marker: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(MARKER_ENV, None)
    path = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        {
            MARKER_ENV: marker,
            "PYTHONPATH": os.pathsep.join(path),
            # Bitwise comparisons need one thread count everywhere; 2 shared cores.
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "ACCELERATE_USE_CPU": "1",
        }
    )
    env.update(extra)
    return env


# Sets RLIMIT_AS, then becomes the command (same pid): no preexec_fn, which is unsafe
# in a process running threads (the checkpoint watcher).
_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


@dataclass
class Exit:
    rc: int | None  # None: still running at the bound (then killed)
    seconds: float  # from the fault (or the start) to the launched process' exit
    hung: bool
    bound: float  # seconds the processes had
    leftovers: list[str]  # processes of the run alive at the bound, the launched one ended
    peak_rss_mb: float | None


class Proc:
    """One launched command: its own session (so its group can be signalled), output to
    NAME.out / NAME.err in `logs`, a memory limit, a marker in its environment."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        logs: Path,
        marker: str | None = None,
        env: dict[str, str] | None = None,
        memory: int | None = MEMORY_LIMIT,
        cwd: Path = ROOT,
    ) -> None:
        self.name, self.marker = name, marker or new_marker()
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        (logs / f"{name}.cmd").write_text(" ".join(map(str, argv)) + "\n")
        if memory:
            argv = [sys.executable, "-c", _LIMIT, str(memory), *map(str, argv)]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                list(map(str, argv)),
                cwd=cwd,
                env=run_env(self.marker, **(env or {})),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self.rc: int | None = None
        self.ended: float | None = None
        self.peak_rss_mb: float | None = None

    def poll(self) -> int | None:
        if self.rc is None:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already (Popen.wait)
                pid, status, usage = self.pid, None, None
            if pid:
                if status is None:
                    self.rc = self.popen.returncode
                else:
                    self.rc = os.waitstatus_to_exitcode(status)
                    self.popen.returncode = self.rc
                self.ended = time.monotonic()
                self.peak_rss_mb = usage.ru_maxrss / 1024 if usage else None
        return self.rc

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match | None:
        """The first match of `pattern` (multiline) in stdout; None if the process ended
        or `timeout` passed first."""
        regex, deadline = re.compile(pattern, re.M), time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.out)
            if match:
                return match
            if self.poll() is not None:
                return regex.search(self.out)
            time.sleep(0.05)
        return None

    def wait_file(self, *paths: Path, timeout: float = 120) -> bool:
        """True once any of `paths` exists; False if the process ended or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(Path(p).exists() for p in paths):
                return True
            if self.poll() is not None:
                return any(Path(p).exists() for p in paths)
            time.sleep(0.02)
        return False

    def finish(self, since: float | None = None, bound: float = EXIT_BOUND_S) -> Exit:
        """Wait until `since + bound` for this process and every other process of its
        run to end; then kill what is left (a hang or orphans) and say so."""
        since = self.started if since is None else since
        deadline = since + bound
        while time.monotonic() < deadline:
            if self.poll() is not None and not marked_pids(self.marker):
                break
            time.sleep(0.1)
        self.poll()
        hung = self.rc is None
        leftovers = [] if hung else [describe(p) for p in marked_pids(self.marker)]
        self.kill()
        seconds = (self.ended if self.ended is not None else time.monotonic()) - since
        return Exit(self.rc, round(seconds, 2), hung, bound, leftovers, self.peak_rss_mb)

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=30)
            self.poll()
            if self.rc is None:
                self.rc = self.popen.returncode
        kill_marked(self.marker)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def trainer_tracebacks(text: str) -> list[str]:
    """The tracebacks in `text`, less torchrun's own (it prints one, ChildFailedError,
    whenever a rank exits non-zero: the launcher's report, not the trainer's)."""
    blocks = text.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if "torch/distributed/run.py" not in b]


def own_lines(text: str) -> list[str]:
    """Non-empty stderr lines that are not ours (fault_inject's notes, DeepSpeed's)."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(NOISE)]


# -- checkpoints ----------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def complete_checkpoints(ckpts: Path) -> dict[str, str]:
    from distcolor.checkpoint import STATE, list_checkpoints

    found = {}
    for path in list_checkpoints(ckpts):
        try:
            found[path.name] = _sha(path / STATE)
        except OSError:
            pass
    return found


class CheckpointWatcher:
    """Hashes each complete checkpoint of `ckpts` as it appears (a thread polling every
    50 ms), so that a checkpoint complete at any moment before a fault is known."""

    def __init__(self, ckpts: Path) -> None:
        import distcolor.checkpoint  # noqa: F401 (imported here: not twice at once)

        self.ckpts, self.seen = Path(ckpts), {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from distcolor.checkpoint import STATE, list_checkpoints

        while not self._stop.is_set():
            for path in list_checkpoints(self.ckpts):
                if path.name not in self.seen:
                    try:
                        self.seen[path.name] = _sha(path / STATE)
                    except OSError:
                        pass
            self._stop.wait(0.05)

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._thread.join()
        return dict(self.seen)


def lost_checkpoints(ckpts: Path, before: dict[str, str]) -> list[str]:
    """Which of `before` (complete checkpoints and their hashes) are no longer intact; the
    newest one left is also loaded."""
    from distcolor.checkpoint import STATE, is_complete, load_checkpoint

    lost = []
    for name, sha in sorted(before.items()):
        path = Path(ckpts) / name
        if not is_complete(path):
            lost.append(f"{name}: no longer a complete checkpoint")
        elif _sha(path / STATE) != sha:
            lost.append(f"{name}: state.pt changed after it was complete")
    intact = [n for n in sorted(before) if not any(x.startswith(n) for x in lost)]
    if intact:
        try:
            load_checkpoint(Path(ckpts) / intact[-1])
        except Exception as err:  # noqa: BLE001 (any failure is the finding)
            lost.append(f"{intact[-1]}: cannot be loaded ({err})")
    return lost


# -- runs -------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    kind: str
    problems: list[str] = field(default_factory=list)
    hang: bool = False
    orphans: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    bitwise: bool | None = None  # None: no resume compared
    rc: int | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition

    def exited(self, ended: Exit, what: str = "the run") -> None:
        """Record a hang or orphans from `ended`."""
        self.rc, self.seconds = ended.rc, ended.seconds
        if ended.hung:
            self.hang = True
            self.problems.append(f"hang: {what} still running {ended.bound:.0f} s after the fault")
        if ended.leftovers:
            self.orphans += ended.leftovers
            self.problems.append(f"orphans: {len(ended.leftovers)} process(es) of {what} left")

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


TINY = {
    "data.synthetic": "null",
    "data.image_size": 32,
    "data.batch_size": 4,
    "data.shuffle_buffer": 8,
    "model.generator.width": 8,
    "model.generator.depth": 5,
    "model.discriminator.width": 8,
    "train.log_every": 1,
    "train.sample_every": 1000,
    "train.ckpt_every": 2,
    "train.keep_last": 50,
    "train.eval_images": 0,
}


@dataclass
class Family:
    """Runs that differ only in their fault: one config, a straight reference run."""

    name: str
    nproc: int
    steps: int
    extra: dict = field(default_factory=dict)


SINGLE = Family("single", 1, 10, {"data.num_workers": 2})
RANKS = Family("ranks", 2, 6, {"data.num_workers": 1})


class FaultContext:
    """A work folder (tiny shards, runs, references) and a log folder per case."""

    def __init__(self, work: Path, logs: Path, bound: float = EXIT_BOUND_S) -> None:
        self.work, self.logs, self.bound = Path(work), Path(logs), bound
        self.work.mkdir(parents=True, exist_ok=True)
        self._references: dict[str, Path] = {}
        self._shards: Path | None = None

    @property
    def shards(self) -> Path:
        if self._shards is None:
            from distcolor.data.shard_build import build_shards
            from tests.conftest import TINY_SHARDS

            out = self.work / "shards"
            if not (out / "manifest.json").exists():
                build_shards(out, **TINY_SHARDS, log=lambda *_: None)
            self._shards = out
        return self._shards

    def overrides(self, family: Family, run: str, out_dir: Path | None = None, **more) -> list:
        values = {
            **TINY,
            "run.out_dir": str(out_dir or self.work / "runs"),
            "run.name": run,
            "data.shards": str(self.shards),
            "train.max_steps": family.steps,
            **family.extra,
            **more,
        }
        return [f"{k}={v}" for k, v in values.items()]

    def train_argv(self, family: Family, overrides: list, inject=(), resume=False) -> list:
        script = ["scripts/train.py", *(["--resume", "auto"] if resume else []), *overrides]
        if inject:
            script = ["tests/fault_inject.py", *map(str, inject), *script]
        if family.nproc == 1:
            return [sys.executable, *script]
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
            str(family.nproc), "--master_addr", "127.0.0.1", "--master_port",
            str(free_port()), *script,
        ]  # fmt: skip

    def run_dir(self, run: str) -> Path:
        return self.work / "runs" / run

    def reference(self, family: Family) -> Path:
        """The family's straight run to its last step (once per context)."""
        if family.name not in self._references:
            run = f"reference-{family.name}"
            if not (self.run_dir(run) / "checkpoints" / f"step-{family.steps:08d}").exists():
                proc = Proc(
                    run,
                    self.train_argv(family, self.overrides(family, run)),
                    logs=self.logs / "references",
                )
                ended = proc.finish(bound=600)
                if ended.rc != 0 or ended.leftovers:
                    raise RuntimeError(
                        f"reference run {run} failed (rc {ended.rc}): {proc.err[-2000:]}"
                    )
            self._references[family.name] = self.run_dir(run)
        return self._references[family.name]

    def case_logs(self, case: Case, *, fresh: bool = False) -> Path:
        """The case's log folder (`fresh`: emptied first, at the start of a case)."""
        folder = self.logs / case.kind / case.name
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        return folder

    def resume_and_compare(self, case: Case, family: Family, run: str) -> None:
        """`--resume auto` to the family's last step; bitwise against the reference."""
        from distcolor.checkpoint import checkpoint_path, load_checkpoint
        from tests.helpers import TRAINING_STATE, assert_bitwise_equal

        reference = self.reference(family)
        argv = self.train_argv(family, self.overrides(family, run), resume=True)
        proc = Proc("resume", argv, logs=self.case_logs(case))
        ended = proc.finish(bound=max(300, self.bound))
        if ended.hung or ended.leftovers or ended.rc != 0:
            case.bitwise = False
            tail = " | ".join(own_lines(proc.err)[-3:])
            case.problems.append(
                f"resume: rc {ended.rc}{', hung' if ended.hung else ''}"
                f"{', orphans' if ended.leftovers else ''}: {tail}"
            )
            return
        name = checkpoint_path(Path("."), family.steps).name
        try:
            a = load_checkpoint(reference / "checkpoints" / name)
            b = load_checkpoint(self.run_dir(run) / "checkpoints" / name)
            for key in (*TRAINING_STATE, "loader", "rng"):
                assert_bitwise_equal(a[key], b[key], key)
            case.bitwise = True
        except Exception as err:  # noqa: BLE001 (AssertionError or an unreadable file)
            case.bitwise = False
            case.problems.append(f"resume not bitwise identical: {str(err)[:300]}")
        resumed_from = re.search(r"resuming from \S+ \(step (\d+)\)", proc.out)
        case.notes.append(f"resumed from step {resumed_from.group(1) if resumed_from else 0}")

    def fresh_run(self, case: Case) -> str:
        run = f"{case.kind}-{case.name}"
        shutil.rmtree(self.run_dir(run), ignore_errors=True)
        return run


def _record(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# -- scenarios ------------------------------------------------------------------------
# Each returns a Case; none raises for a finding (only for a broken harness).


def injected(ctx: FaultContext, family: Family, name: str, inject: list, *,
             expect: str, rank: int = 0, resume: bool = True, **more) -> Case:  # fmt: skip
    """A fault of tests/fault_inject.py in rank `rank` of a run of `family`.

    expect: "kill" (the process is killed: any non-zero exit), "error" (an unknown error:
    non-zero, the injected message shown), "enospc" (a known kind: non-zero, one `error:`
    line about the disk, no traceback), "peer" (another rank hung: non-zero, an `error:`
    line). `more`: config overrides of the faulty run only (the resume uses the family's)."""
    case = Case(name, "inject" if family.nproc == 1 else "ranks")
    run = ctx.fresh_run(case)
    logs = ctx.case_logs(case, fresh=True)
    record = logs / "fault.json"
    ckpts = ctx.run_dir(run) / "checkpoints"
    opts = ["--rank", rank, "--record", record, "--ckpts", ckpts, *inject]
    watcher = CheckpointWatcher(ckpts)
    argv = ctx.train_argv(family, ctx.overrides(family, run, **more), opts)
    proc = Proc("fault", argv, logs=logs)
    if not proc.wait_file(record, record.with_name("fault.rank1.json"), timeout=300):
        watcher.stop()
        proc.finish(bound=1)
        case.problems.append(f"the fault never happened (rc {proc.rc}): {proc.err[-500:]}")
        return case
    fault = _record(record)
    since = time.monotonic() - max(0.0, time.time() - fault.get("time", time.time()))
    ended = proc.finish(since=since, bound=ctx.bound)
    seen = watcher.stop()
    case.exited(ended)
    case.check(ended.rc not in (0, None), f"exit status {ended.rc} after the fault, not an error")
    err = proc.err
    if expect == "error":
        case.check("fault_inject: injected failure" in err, "the injected error is not shown")
    if expect == "enospc":
        lines = error_lines(err)
        # Under torchrun every rank may say a line; the first says why (the others that
        # they lost the rank that failed first).
        case.check(
            len(lines) == 1 or (family.nproc > 1 and 1 <= len(lines) <= family.nproc),
            f"{len(lines)} `error:` lines",
        )
        case.check(
            bool(lines) and re.search(r"space|disk|full", lines[0], re.I) is not None,
            f"the first `error:` line does not name the full disk: {own_lines(err)[-1:]}",
        )
        case.check(not trainer_tracebacks(err), "a traceback for a full disk")
    if expect == "peer":
        case.check(
            any(f"rank {rank}" in line for line in error_lines(err)),
            f"no `error:` line naming the silent rank {rank}: {own_lines(err)[-2:]}",
        )
    before = {**seen, **fault.get("complete", {})}
    # A checkpoint the fault itself interrupted was never complete; one seen complete
    # (before or after the fault) must stay intact.
    case.lost = lost_checkpoints(ckpts, before)
    case.check(not case.lost, f"lost checkpoints: {case.lost}")
    if resume and not case.hang:
        ctx.resume_and_compare(case, family, run)
    return case


def external_kill(ctx: FaultContext, family: Family, name: str, after_step: int, *,
                  rank: int = 0, target: str = "trainer") -> Case:  # fmt: skip
    """kill -9 from outside once `step N/` is logged: the trainer (or rank `rank`'s
    process under torchrun), or one of its loader workers (target="worker")."""
    case = Case(name, "kill" if family.nproc == 1 else "ranks")
    run = ctx.fresh_run(case)
    logs = ctx.case_logs(case, fresh=True)
    ckpts = ctx.run_dir(run) / "checkpoints"
    watcher = CheckpointWatcher(ckpts)
    proc = Proc("fault", ctx.train_argv(family, ctx.overrides(family, run)), logs=logs)
    if not proc.wait_for(rf"^step {after_step}/", timeout=300):
        watcher.stop()
        proc.finish(bound=1)
        case.problems.append(f"step {after_step} never logged (rc {proc.rc}): {proc.err[-500:]}")
        return case
    if target == "worker":
        victims = loader_workers(proc.marker)[:1]
    elif family.nproc == 1:
        victims = [proc.pid]
    else:
        victims = [p for p in [rank_pid(proc.marker, rank)] if p]
    if not case.check(bool(victims), f"no {target} process found to kill"):
        watcher.stop()
        proc.finish(bound=1)
        return case
    before = complete_checkpoints(ckpts)
    since = time.monotonic()
    os.kill(victims[0], signal.SIGKILL)
    case.notes.append(f"killed {target} pid {victims[0]}")
    ended = proc.finish(since=since, bound=ctx.bound)
    seen = watcher.stop()
    case.exited(ended)
    case.check(ended.rc not in (0, None), f"exit status {ended.rc} after the kill, not an error")
    case.lost = lost_checkpoints(ckpts, {**seen, **before})
    case.check(not case.lost, f"lost checkpoints: {case.lost}")
    if not case.hang:
        ctx.resume_and_compare(case, family, run)
    return case


def stop_signal(ctx: FaultContext, family: Family, name: str, sig: int, after_step: int, *,
                twice: bool = False) -> Case:  # fmt: skip
    """SIGINT / SIGTERM to every process group of the run once `step N/` is logged.

    Once: the step finishes, a checkpoint is written, exit 0, the resume is bitwise.
    Twice (SIGINT, steps slowed to 1 s so that the second lands inside one): exit 130,
    one line, no traceback."""
    case = Case(name, "signal" if family.nproc == 1 else "ranks")
    run = ctx.fresh_run(case)
    logs = ctx.case_logs(case, fresh=True)
    ckpts = ctx.run_dir(run) / "checkpoints"
    inject = ["--rank", -1, "--step-slow", f"{after_step}:1.0"] if twice else []
    steps = {"train.max_steps": 100_000}
    argv = ctx.train_argv(family, ctx.overrides(family, run, **steps), inject)
    watcher = CheckpointWatcher(ckpts)
    proc = Proc("fault", argv, logs=logs)
    if not proc.wait_for(rf"^step {after_step}/", timeout=300):
        watcher.stop()
        proc.finish(bound=1)
        case.problems.append(f"step {after_step} never logged (rc {proc.rc}): {proc.err[-500:]}")
        return case
    before = complete_checkpoints(ckpts)
    since = time.monotonic()
    signal_groups(proc.marker, sig)
    if twice:
        proc.wait_for(r"stopping after this step", timeout=10)
        time.sleep(0.2)
        signal_groups(proc.marker, sig)
    ended = proc.finish(since=since, bound=ctx.bound)
    seen = watcher.stop()
    case.exited(ended)
    err, out = proc.err, proc.out
    name_ = signal.Signals(sig).name
    if twice:
        case.check(ended.rc == 130, f"exit status {ended.rc}, not 130")
        case.check("Traceback" not in err, "a traceback after the second Ctrl-C")
        lines = own_lines(err)
        case.check(len(lines) == 1, f"{len(lines)} stderr lines, not 1: {lines[-3:]}")
    else:
        if family.nproc == 1:
            case.check(ended.rc == 0, f"exit status {ended.rc}, not 0: {own_lines(err)[-2:]}")
        stopped = re.search(rf"{name_}: stopped at step (\d+)", out)
        if case.check(stopped is not None, f"no '{name_}: stopped at step' line"):
            step = int(stopped.group(1))
            case.notes.append(f"stopped at step {step}")
            case.check(
                f"step-{step:08d}" in complete_checkpoints(ckpts),
                f"no complete checkpoint of the stop step {step}",
            )
            case.check(step < family.steps, f"stopped at {step}, past the family's last step")
    case.lost = lost_checkpoints(ckpts, {**seen, **before})
    case.check(not case.lost, f"lost checkpoints: {case.lost}")
    if not twice and not case.hang and case.ok:
        ctx.resume_and_compare(case, family, run)
    return case


@contextlib.contextmanager
def tmpfs(ctx: FaultContext, case: Case, size_mb: int) -> Iterator[Path | None]:
    """A `size_mb` MB tmpfs for `case` (None, noted as skipped, where mounting fails)."""
    mount = ctx.work / f"tmpfs-{case.name}"
    mount.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        case.notes.append(f"skipped: cannot mount a tmpfs ({mounted.stderr.strip()})")
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def check_disk_full_exit(case: Case, ended: Exit, err: str) -> None:
    """A full disk ended the process: non-zero, one `error:` line naming it, no traceback."""
    case.exited(ended)
    case.check(ended.rc not in (0, None), f"exit status {ended.rc} on a full disk")
    lines = error_lines(err)
    case.check(len(lines) == 1, f"{len(lines)} `error:` lines, not 1: {own_lines(err)[-2:]}")
    case.check(
        any(re.search(r"space|disk|full", ln, re.I) for ln in lines),
        "no `error:` line names the full disk",
    )
    case.check("Traceback" not in err, "a traceback for a full disk")


def disk_full(ctx: FaultContext, name: str, size_mb: int) -> Case:
    """run.out_dir on a `size_mb` MB tmpfs, checkpoints of a width-24 generator (37 MB
    each, every 2 steps), loader workers on: one `error:` line naming the disk, non-zero
    exit within the bound, no leftovers, the previous complete checkpoint intact."""
    case = Case(name, "disk_full")
    logs = ctx.case_logs(case, fresh=True)
    with tmpfs(ctx, case, size_mb) as mount:
        if mount is None:
            return case
        family = Family("disk", 1, 8, {"data.num_workers": 2, "model.generator.width": 24})
        ckpts = mount / "tiny" / "checkpoints"
        argv = ctx.train_argv(family, ctx.overrides(family, "tiny", out_dir=mount))
        watcher = CheckpointWatcher(ckpts)
        proc = Proc("fault", argv, logs=logs)
        # Hung runs are timed from their start here: a bound of 300 s + the exit bound.
        ended = proc.finish(bound=300 + ctx.bound)
        seen = watcher.stop()
        check_disk_full_exit(case, ended, proc.err)
        case.lost = lost_checkpoints(ckpts, seen)
        case.check(not case.lost, f"lost checkpoints: {case.lost}")
        case.notes.append(f"complete checkpoints seen: {sorted(seen)}")
    return case


def second_trainer(ctx: FaultContext, family: Family, name: str, *, resume: bool) -> Case:
    """A second trainer on a run that is training: refused with one line naming the other
    process; the first one carries on and finishes."""
    case = Case(name, "lock")
    run = ctx.fresh_run(case)
    logs = ctx.case_logs(case, fresh=True)
    ckpts = ctx.run_dir(run) / "checkpoints"
    slow = ["--step-slow", "1:0.4"]  # 10 steps of >= 0.4 s: B starts while A trains
    first = Proc("first", ctx.train_argv(family, ctx.overrides(family, run), slow), logs=logs)
    if not first.wait_for(r"^step 2/", timeout=300):
        first.finish(bound=1)
        case.problems.append(f"the first trainer never reached step 2: {first.err[-500:]}")
        return case
    argv = ctx.train_argv(family, ctx.overrides(family, run), resume=resume)
    second = Proc("second", argv, logs=logs)
    ended = second.finish(bound=ctx.bound + 30)  # its start-up counts too
    case.exited(ended, "the second trainer")
    err = second.err
    case.check(ended.rc not in (0, None), f"the second trainer exited {ended.rc}")
    lines = own_lines(err)
    case.check(
        len(lines) == 1 and lines[0].startswith("error:"),
        f"the second trainer's stderr is not one error line: {lines[-3:]}",
    )
    case.check("Traceback" not in err, "a traceback from the second trainer")
    done = first.finish(bound=300)
    if done.hung or done.leftovers:
        case.exited(done, "the first trainer")
    case.check(done.rc == 0, f"the first trainer exited {done.rc}: {own_lines(first.err)[-2:]}")
    last = f"step-{family.steps:08d}"
    case.check(last in complete_checkpoints(ckpts), f"the first trainer's {last} is missing")
    return case


def shard_folder_usable(folder: Path) -> str | None:
    """None when `folder` is a complete shard set (manifest, every listed tar readable
    with its listed count); else what is wrong."""
    import tarfile

    from distcolor.data.catalog import read_manifest, shard_list
    from distcolor.errors import UserError

    try:
        manifest = read_manifest(folder)
        for split in ("train", "test"):
            for shard in shard_list(folder, manifest, split):
                with tarfile.open(shard.url) as tar:
                    keys = {m.name.split(".")[0] for m in tar.getmembers() if m.isfile()}
                if len(keys) != shard.count:
                    return f"{shard.url}: {len(keys)} samples, manifest says {shard.count}"
    except (UserError, OSError, tarfile.TarError) as err:
        return str(err)
    return None


def make_shards_argv(out: Path, *more: str, inject=()) -> list:
    script = ["scripts/make_shards.py", "--out", str(out), *more]
    if inject:
        script = ["tests/fault_inject.py", *map(str, inject), *script]
    return [sys.executable, *script]


SHARD_ARGS = ("--synthetic", "60", "--synthetic-size", "40", "--size", "40", "--shard-size", "6")


def shards_usable_by_trainer(ctx: FaultContext, folder: Path, logs: Path) -> str | None:
    """None when one training step runs on `folder` (the trainer recovers a folder a
    killed publish left, where that is needed); else the trainer's last line."""
    family = Family("check", 1, 1, {"data.num_workers": 0})
    argv = ctx.train_argv(family, ctx.overrides(family, "shard-check", out_dir=logs / "runs",
                                                **{"data.shards": str(folder)}))  # fmt: skip
    proc = Proc("trainer-check", argv, logs=logs)
    ended = proc.finish(bound=300)
    shutil.rmtree(logs / "runs", ignore_errors=True)
    return None if ended.rc == 0 else " | ".join(own_lines(proc.err)[-2:]) or f"rc {ended.rc}"


def publish_kill(ctx: FaultContext, name: str, regex: str, nth: int = 1, *,
                 exchange: bool = True) -> Case:  # fmt: skip
    """`make_shards --overwrite` killed (-9) before its `nth` os.rename/os.replace whose
    destination matches `regex` (`exchange=False`: the publish without the atomic folder
    exchange, as on NFS): a complete shard set must stay at --out (the old one until the
    new one is complete), for the trainer at least (which recovers a cut publish)."""
    case = Case(name, "shards")
    logs = ctx.case_logs(case, fresh=True)
    out = ctx.work / "shard-kill" / name
    shutil.rmtree(out.parent, ignore_errors=True)
    env = {} if exchange else {"DISTCOLOR_NO_RENAME_EXCHANGE": "1"}
    built = Proc("old", make_shards_argv(out, *SHARD_ARGS, "--seed", "1"), logs=logs, env=env)
    if built.finish(bound=300).rc != 0:
        case.problems.append(f"the first build failed: {built.err[-500:]}")
        return case
    inject = ["--record", logs / "fault.json", "--rename-kill", f"{regex}@{nth}"]
    argv = make_shards_argv(out, *SHARD_ARGS, "--seed", "2", "--overwrite", inject=inject)
    proc = Proc("fault", argv, logs=logs, env=env)
    ended = proc.finish(bound=300)
    fault = _record(logs / "fault.json")
    if not case.check(bool(fault), f"the kill never happened (rc {ended.rc}): {proc.err[-300:]}"):
        return case
    case.rc = ended.rc
    case.notes.append(f"killed before renaming {fault.get('src')} -> {fault.get('dst')}")
    if ended.leftovers:
        case.exited(ended, "make_shards")
    problem = shard_folder_usable(out)
    if problem:
        case.notes.append(f"--out not a complete set right after the kill: {problem}")
        problem = shards_usable_by_trainer(ctx, out, logs)
    if problem:
        case.lost.append(f"shard set: {problem}")
        case.problems.append(f"dataset lost: {problem}")
    again = Proc("again", make_shards_argv(out, *SHARD_ARGS, "--seed", "2", "--overwrite"),
                 logs=logs, env=env)  # fmt: skip
    redo = again.finish(bound=300)
    case.check(redo.rc == 0, f"rebuilding after the kill failed: {own_lines(again.err)[-2:]}")
    case.check(shard_folder_usable(out) is None, "no usable shard set after the rebuild")
    return case


def make_shards_twice(ctx: FaultContext, name: str) -> Case:
    """Two make_shards into one --out at once: the second is refused with one line."""
    case = Case(name, "lock")
    logs = ctx.case_logs(case, fresh=True)
    out = ctx.work / "shard-lock" / name
    shutil.rmtree(out, ignore_errors=True)
    first = Proc("first", make_shards_argv(out, *SHARD_ARGS, "--workers", "1",
                 inject=["--rename-slow", r"\.tar$@0.5"]), logs=logs)  # fmt: skip
    staging = [out / ".partial", out.parent / f".{out.name}.partial"]
    if not first.wait_file(*staging, timeout=120):
        first.finish(bound=1)
        case.problems.append(f"the first build never started: {first.err[-500:]}")
        return case
    second = Proc("second", make_shards_argv(out, *SHARD_ARGS), logs=logs)
    ended = second.finish(bound=ctx.bound + 30)
    case.exited(ended, "the second make_shards")
    lines = own_lines(second.err)
    case.check(ended.rc not in (0, None), f"the second make_shards exited {ended.rc}")
    case.check(
        len(lines) == 1 and lines[0].startswith("error:"),
        f"the second make_shards' stderr is not one error line: {lines[-3:]}",
    )
    done = first.finish(bound=300)
    case.check(done.rc == 0, f"the first make_shards exited {done.rc}: {own_lines(first.err)[-2:]}")
    problem = shard_folder_usable(out)
    case.check(problem is None, f"no usable shard set at the end: {problem}")
    return case


def make_shards_disk_full(ctx: FaultContext, name: str, size_mb: int = 1) -> Case:
    """make_shards into a tiny tmpfs with 2 workers: one `error:` line about the disk."""
    case = Case(name, "disk_full")
    logs = ctx.case_logs(case, fresh=True)
    with tmpfs(ctx, case, size_mb) as mount:
        if mount is None:
            return case
        args = ("--synthetic", "400", "--synthetic-size", "96", "--size", "96", "--workers", "2")
        proc = Proc("fault", make_shards_argv(mount / "s", *args), logs=logs)
        check_disk_full_exit(case, proc.finish(bound=300), proc.err)
    return case
    try:
        args = ("--synthetic", "400", "--synthetic-size", "96", "--size", "96", "--workers", "2")
        proc = Proc("fault", make_shards_argv(mount / "s", *args), logs=logs)
        ended = proc.finish(bound=300)
        case.exited(ended)
        err = proc.err
        case.check(ended.rc not in (0, None), f"exit status {ended.rc} on a full disk")
        lines = error_lines(err)
        case.check(len(lines) == 1, f"{len(lines)} `error:` lines, not 1: {own_lines(err)[-2:]}")
        case.check(
            any(re.search(r"space|disk|full", ln, re.I) for ln in lines),
            "no `error:` line names the full disk",
        )
        case.check("Traceback" not in err, "a traceback for a full disk")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return case
