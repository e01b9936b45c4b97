"""Real multi-process runs: 2 ranks on CPU (gloo) over loopback, launched by torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_trains_and_evaluates_across_ranks(tmp_path, tiny_shards):
    args = tiny_overrides(tmp_path, tiny_shards, **{"train.max_steps": 3})
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "scripts/train.py",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    result = json.loads((run / "eval.json").read_text())
    # 12 test images, split between the two ranks and summed back.
    assert result["images"] == 12
    assert (run / "checkpoints" / "step-00000003.pt").is_file()
    # Only rank 0 writes: one line per logged step, not two.
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3]
