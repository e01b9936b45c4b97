"""Launching: the Accelerate config files, multi-node over loopback, the SLURM script and
an elastic restart after a crash. Every run here is real processes on CPU (gloo) talking
over 127.0.0.1; nothing in torch.distributed is mocked.

Findings these tests pin down (Accelerate 1.x, torch 2.x, CPU only):
- a `distributed_type: MULTI_CPU` config starts ONE process unless mpirun is used, so
  configs/accelerate/cpu_2proc.yaml uses the torchrun launcher, with ACCELERATE_USE_CPU=1
  set by the caller to make the processes use the CPU and gloo;
- torchrun restarts (--max-restarts) only come back reliably with the c10d rendezvous and
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: otherwise the restarted workers share the store of
  the first attempt, read its stale gloo addresses, and hang or fail in
  init_process_group (pytorch/pytorch#135712). The static rendezvous (--master_addr /
  --master_port) always shares it: 2 of 3 restarts hung here even with the variable set.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distcolor.checkpoint import load_checkpoint
from tests.conftest import tiny_overrides
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
ACCEL = ROOT / "configs" / "accelerate"
SLURM = ROOT / "scripts" / "slurm_train.sh"
STEPS = 5  # tiny runs here: checkpoints at 2, 4 and 5 (train.ckpt_every=2)
WORLD_2 = "TFLOP per step of 4 x 2 process(es)"  # rank 0's start-up line in a 2-process run


def launch_env(**extra: str | None) -> dict[str, str]:
    """This environment minus any launcher or SLURM variables, on CPU, one thread each."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_", "PET_"))
        and k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    }
    path = os.pathsep.join([str(Path(sys.executable).parent), inherited.get("PATH", "")])
    env = {
        **inherited,
        "PATH": path,
        "ACCELERATE_USE_CPU": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    return {k: v for k, v in env.items() if v is not None}  # None: leave the variable unset


def accelerate_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def run(cmd: list[str], timeout: int = 180, **env: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env=launch_env(**env), capture_output=True, text=True, timeout=timeout
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def step_losses(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: loss scalars} from metrics.jsonl; fails if a step's losses were written twice
    (two ranks writing)."""
    losses: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        scalars = {k: v for k, v in record.items() if k.startswith("loss/")}
        if scalars:
            assert record["step"] not in losses, f"step {record['step']} logged twice"
            losses[record["step"]] = scalars
    return losses


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_shards):
    """The documented CPU command: 2 gloo processes through cpu_2proc.yaml (5 steps)."""
    tmp = tmp_path_factory.mktemp("reference")
    cmd = accelerate_launch(
        "--config_file",
        str(ACCEL / "cpu_2proc.yaml"),
        "scripts/train.py",
        *tiny_overrides(tmp, tiny_shards, **{"train.max_steps": STEPS}),
    )
    # As documented: on a machine without GPUs no ACCELERATE_USE_CPU is needed (the
    # trainer asks Accelerate for the CPU itself).
    proc = run(cmd, ACCELERATE_USE_CPU=None)
    assert proc.returncode == 0, output(proc)[-3000:]
    return tmp / "runs" / "tiny", proc


def test_cpu_2proc_config_starts_two_gloo_processes(reference_run):
    run_dir, proc = reference_run
    assert WORLD_2 in proc.stdout, output(proc)[-3000:]
    assert load_checkpoint(checkpoint(run_dir, STEPS))["world_size"] == 2
    # 12 test images, split between the ranks and summed back; one line per step.
    assert json.loads((run_dir / "eval.json").read_text())["images"] == 12
    assert sorted(step_losses(run_dir)) == list(range(1, STEPS + 1))


@pytest.mark.parametrize(
    ("config", "flags", "world", "precision"),
    [
        ("single_gpu.yaml", ["--mixed_precision", "bf16"], 1, "bf16"),
        ("8gpu.yaml", ["--num_processes", "2"], 2, "no"),
    ],
)
def test_gpu_configs_parse_and_pass_precision(tmp_path, config, flags, world, precision):
    # No GPU here: ACCELERATE_USE_CPU=1 runs the same launcher path on the CPU.
    cmd = accelerate_launch(
        "--config_file", str(ACCEL / config), *flags, "tests/launch_probe.py", str(tmp_path)
    )
    proc = run(cmd, timeout=120)
    assert proc.returncode == 0, output(proc)[-3000:]
    ranks = sorted(tmp_path.glob("rank-*.json"))
    assert len(ranks) == world
    facts = json.loads(ranks[0].read_text())
    assert facts["world_size"] == world
    assert (facts["backend"] or "") == ("cpu:gloo" if world > 1 else ""), facts
    assert facts["accelerate_mixed_precision"] == precision == facts["trainer_precision"]


def test_two_machines_over_loopback(tmp_path, tiny_shards, reference_run):
    """multi_node.yaml, 2 "machines" of 1 process each on this host: the same world size,
    data split and losses as the 2-process run on one machine; only rank 0 writes."""
    port = str(free_port())
    args = tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": STEPS})
    logs = [tmp_path / f"machine-{rank}.log" for rank in (0, 1)]
    handles = [log.open("w") for log in logs]
    machines = [
        subprocess.Popen(
            accelerate_launch(
                "--config_file",
                str(ACCEL / "multi_node.yaml"),
                "--num_machines", "2",
                "--num_processes", "2",
                "--machine_rank", str(rank),
                "--main_process_ip", "127.0.0.1",
                "--main_process_port", port,
                "scripts/train.py",
                *args,
            ),
            cwd=ROOT,
            env=launch_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        for rank, handle in enumerate(handles)
    ]  # fmt: skip
    try:
        for machine in machines:
            machine.wait(timeout=180)
    finally:
        for machine, handle in zip(machines, handles, strict=True):
            machine.kill() if machine.poll() is None else None
            handle.close()
    outs = [log.read_text() for log in logs]
    for machine, out in zip(machines, outs, strict=True):
        assert machine.returncode == 0, out[-3000:]
    assert WORLD_2 in outs[0]
    assert "TFLOP per step" not in outs[1]  # machine 1 holds rank 1: it prints nothing
    run_dir = tmp_path / "runs" / "tiny"
    assert step_losses(run_dir) == step_losses(reference_run[0])
    assert load_checkpoint(checkpoint(run_dir, STEPS))["world_size"] == 2


def test_elastic_restart_resumes_from_last_complete_checkpoint(
    tmp_path, tiny_shards, reference_run
):
    """torchrun --max-restarts 1 with --resume auto: rank 1 dies entering step 4 on the
    first attempt; the restart resumes from step 2 by itself and ends with the very
    weights of the uninterrupted run."""
    args = tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": STEPS})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--max-restarts", "1",
        "--nproc_per_node", "2",
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "tests/crash_once.py", "--crash-rank", "1", "--crash-at-step", "4",
        "scripts/train.py", "--resume", "auto", *args,
    ]  # fmt: skip
    env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "10"}
    proc = run(cmd, **env)
    text = output(proc)
    assert proc.returncode == 0, text[-3000:]
    assert "crash_once: rank 1 exits on entering step 4" in text  # it did crash
    run_dir = tmp_path / "runs" / "tiny"
    assert f"resuming from {checkpoint(run_dir, 2)}" in text, text[-3000:]
    final = load_checkpoint(checkpoint(run_dir, STEPS))
    assert final["step"] == STEPS
    reference = load_checkpoint(checkpoint(reference_run[0], STEPS))
    for net in ("G", "D"):
        assert final[net].keys() == reference[net].keys()
        for name, tensor in final[net].items():
            assert torch.equal(tensor, reference[net][name]), f"{net}.{name} differs"


# --- SLURM -------------------------------------------------------------------------

FAKE_SCONTROL = """#!/bin/sh
if [ "$1 $2" = "show hostnames" ]; then echo "$3" | tr ',' '\\n'; exit 0; fi
echo "$*" >> "$FAKE_SCONTROL_LOG"
"""

FAKE_SRUN = """#!{python}
# srun stand-in: one task per node on this machine, SLURM_NODEID set, signals forwarded.
import os, signal, subprocess, sys
args, nodes = sys.argv[1:], 1
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt == "--nodes":
        nodes = int(args.pop(0))
    elif opt == "--ntasks-per-node":
        args.pop(0)
tasks = [
    subprocess.Popen(args, env={{**os.environ, "SLURM_NODEID": str(i), "SLURM_PROCID": str(i)}})
    for i in range(nodes)
]
def forward(signum, frame):
    for t in tasks:
        if t.poll() is None:
            t.send_signal(signum)
signal.signal(signal.SIGTERM, forward)
codes = [t.wait() for t in tasks]
sys.exit(next((c for c in codes if c), 0))
"""


def fake_slurm(tmp_path: Path, nodelist: str, nodes: int, **extra: str) -> dict[str, str]:
    """Environment of a batch job, with scontrol (and srun) stand-ins first on PATH."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text.format(python=sys.executable) if name == "srun" else text)
        (bin_dir / name).chmod(0o755)
    env = launch_env(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES=str(nodes),
        SLURM_JOB_NODELIST=nodelist,
        SLURM_SUBMIT_DIR=str(ROOT),
        FAKE_SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        **extra,
    )
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_slurm_script_syntax_and_launch_flags(tmp_path):
    assert subprocess.run(["bash", "-n", str(SLURM)]).returncode == 0
    header = SLURM.read_text()
    assert "#SBATCH --requeue" in header and "#SBATCH --signal=B:TERM@120" in header
    env = fake_slurm(tmp_path, "gpu-a,gpu-b,gpu-c", 3, DRY_RUN="1")
    cmd = ["bash", str(SLURM), "run.name=big", "data.batch_size=8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(x) for x in proc.stdout.splitlines()]
    srun = next(x for x in lines if x[0] == "srun")
    assert flag(srun, "--nodes") == "3" and flag(srun, "--ntasks-per-node") == "1"
    nodes = [x for x in lines if x[:2] == ["accelerate", "launch"]]
    assert len(nodes) == 3
    for rank, argv in enumerate(nodes):
        assert flag(argv, "--machine_rank") == str(rank)
        assert flag(argv, "--main_process_ip") == "gpu-a"  # first host of the allocation
        assert flag(argv, "--main_process_port") == str(20000 + 4242 % 20000)
        assert flag(argv, "--num_machines") == "3"
        assert flag(argv, "--num_processes") == "24"  # 3 nodes x 8 GPUs
        assert flag(argv, "--config_file") == "configs/accelerate/multi_node.yaml"
        script = argv.index("scripts/train.py")
        assert argv[script + 1 :] == ["--resume", "auto", "run.name=big", "data.batch_size=8"]


def test_slurm_job_stops_on_sigterm_requeues_and_resumes(tmp_path, tiny_shards):
    """The batch script for real on 2 stand-in nodes x 1 CPU process: SIGTERM (as
    --signal=B:TERM@120 sends it) makes the trainer checkpoint and stop, the job requeues
    itself, and the requeued job continues from that checkpoint to the end."""
    steps = 24
    args = tiny_overrides(
        tmp_path, tiny_shards, **{"train.max_steps": steps, "train.sample_every": steps}
    )
    env = fake_slurm(
        tmp_path, "127.0.0.1,127.0.0.1", 2, GPUS_PER_NODE="1", MASTER_PORT=str(free_port())
    )
    run_dir = tmp_path / "runs" / "tiny"
    job = subprocess.Popen(
        ["bash", str(SLURM), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (checkpoint(run_dir, 2) / "COMPLETE").exists():
        assert job.poll() is None, job.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint at step 2 within 120 s"
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    first = job.communicate(timeout=120)[0]
    assert job.returncode == 0, first[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    stopped = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*")]
    assert 2 <= max(stopped) < steps, first[-3000:]  # stopped early, with a checkpoint
    assert not (run_dir / "eval.json").exists()

    # The requeued job: same command, same folder.
    env["MASTER_PORT"] = str(free_port())
    again = subprocess.run(
        ["bash", str(SLURM), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, output(again)[-3000:]
    assert f"resuming from {checkpoint(run_dir, max(stopped))}" in output(again)
    assert load_checkpoint(checkpoint(run_dir, steps))["step"] == steps
    assert (run_dir / "eval.json").is_file()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # once
