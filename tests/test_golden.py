"""Golden runs: what training computes, hashed, so that a change of one bit anywhere in a
run (losses as logged, final weights, averages, optimizer states, masks) fails here.

A redesign of the code must keep every hash. Only a deliberate change of what training
computes may rewrite them, and its commit says why:

    DISTCOLOR_GOLDEN_WRITE=1 python -m pytest tests/test_golden.py

The hashes hold on the machine they were written on (CPU kernels differ by instruction set);
tests/golden/runs.json names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from distcolor.checkpoint import latest_checkpoint, load_checkpoint
from tests.conftest import tiny_overrides
from tests.helpers import run_script
from tests.test_distributed import torchrun

GOLDEN = Path(__file__).parent / "golden" / "runs.json"
FIXTURE = Path(__file__).parent / "golden" / "checkpoint-0.1"  # written by distcolor 0.1
WRITE = os.environ.get("DISTCOLOR_GOLDEN_WRITE") == "1"
HASHED = ("step", "G", "D", "G_ema", "steps", "prune", "rng")  # of each final checkpoint

# The embedded default (configs/default.yaml) on fewer, smaller synthetic scenes and fewer
# steps; everything that shapes a step (model, batch, workers, optimizer, EMA) as shipped.
DEFAULT_RUN = {
    "data.synthetic.count": 160,
    "train.max_steps": 12,
    "train.log_every": 1,
    "train.sample_every": 6,
    "train.hist_every": 6,
    "train.ckpt_every": 6,
    "train.eval_images": 32,
    "train.eval_every": 6,
}
# Two ranks, accumulation, both networks pruned three times, survivors rewound to step 2.
PRUNED_RUN = {
    "prune.at_steps": "[4, 8, 10]",
    "prune.discriminator": "true",
    "prune.rewind": "step",
    "prune.rewind_step": 2,
    "train.ema_half_life": 50,
    "train.grad_accum": 2,
    "train.max_steps": 12,
    "train.ckpt_every": 6,
    "train.eval_images": 16,
}


def tensor_digest(value, h) -> None:
    """Feed a nested state (dicts in key order) into the hash `h`, tensors as raw bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(f"<{key}>".encode())
            tensor_digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}]".encode())
        for item in value:
            tensor_digest(item, h)
    else:
        h.update(repr(value).encode())


def fingerprint(run_dir: Path) -> dict:
    """Hashes of a finished run: its logged numbers (timings aside) and each part of its
    final checkpoint; plus the last logged losses, readable, for a diff."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    parts = {}
    for key in HASHED:
        h = hashlib.sha256()
        tensor_digest(state.get(key), h)
        parts[key] = h.hexdigest()[:16]
    last = next(r for r in reversed(rows) if "loss/G/l1" in r)
    return {
        "metrics": hashlib.sha256(json.dumps(logged, sort_keys=True).encode()).hexdigest()[:16],
        "rows": len(rows),
        "checkpoint": parts,
        "last_losses": {k: v for k, v in last.items() if k.startswith("loss/")},
    }


def check(name: str, got: dict) -> None:
    """Compare with (or, in write mode, record) the golden fingerprint `name`."""
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"runs": {}}
    if WRITE:
        golden["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
        golden["torch"] = torch.__version__
        golden["runs"][name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
        return
    assert name in golden["runs"], f"no golden record {name}: run with DISTCOLOR_GOLDEN_WRITE=1"
    assert got == golden["runs"][name], (
        f"{name}: this run computes other numbers than the golden one\n"
        f"golden: {json.dumps(golden['runs'][name], sort_keys=True)}\n"
        f"now:    {json.dumps(got, sort_keys=True)}"
    )


def test_the_default_run_computes_the_golden_numbers(tmp_path):
    args = [f"{k}={v}" for k, v in DEFAULT_RUN.items()]
    paths = [f"run.out_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'shards'}"]
    proc = run_script("scripts/train.py", *paths, *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check("default", fingerprint(tmp_path / "runs" / "default"))


def test_a_two_rank_pruned_run_computes_the_golden_numbers(tmp_path, tiny_shards):
    proc = torchrun(2, "scripts/train.py", *tiny_overrides(tmp_path, tiny_shards, **PRUNED_RUN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(": pruning round") == 3
    check("pruned-2-ranks", fingerprint(tmp_path / "runs" / "tiny"))


# A checkpoint of step 2 of a 4-step tiny run, written by distcolor 0.1 before the redesign
# (issue 19); its config is in the folder. Later code must resume it to the same numbers.
FIXTURE_RUN = {
    "model.generator.width": 4,
    "model.generator.depth": 3,
    "model.discriminator.width": 4,
    "train.max_steps": 4,
    "train.ckpt_every": 2,
    "train.eval_images": 0,
    "data.num_workers": 0,
}


def test_a_checkpoint_of_distcolor_0_1_resumes_to_the_golden_numbers(tmp_path, tiny_shards):
    args = tiny_overrides(tmp_path, tiny_shards, **FIXTURE_RUN)
    if WRITE:  # write the fixture itself: the run's step-2 checkpoint
        proc = run_script("scripts/train.py", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        shutil.rmtree(FIXTURE, ignore_errors=True)
        shutil.copytree(tmp_path / "runs/tiny/checkpoints/step-00000002", FIXTURE)
        shutil.rmtree(tmp_path / "runs")
    proc = run_script("scripts/train.py", "--resume", str(FIXTURE), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check("resumed-0.1-checkpoint", fingerprint(tmp_path / "runs" / "tiny"))
