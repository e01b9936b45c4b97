"""A step's checkpoint: every part of the run with a state (the backend's networks and
updates, the EMA, the pruning ticket, every rank's loader position and random generators)
under fixed keys, written only when every rank holds the same, finite weights.

    checkpoints/step-NNNNNNNN/state.pt   step, init_seed, backend, G_ema, prune, steps,
                                         loader, rng, config, code_version, world_size,
                                         data_order (+ G and D, or the DeepSpeed engines)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from distcolor import __version__
from distcolor.backends.distributed import check_replicas
from distcolor.train.resume import data_order, rng_state


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def all_finite(accelerator: Accelerator, modules: list[nn.Module]) -> bool:
    """Whether every rank's weights and statistics are finite (a collective)."""
    finite = all(
        bool(torch.isfinite(t).all())
        for m in modules
        for t in [*m.parameters(), *m.buffers()]
        if t.is_floating_point()
    )
    bad = torch.tensor(0.0 if finite else 1.0, device=accelerator.device)
    return accelerator.reduce(bad, "sum").item() == 0


def save_checkpoint(run, step: int, *, wait: bool) -> None:
    """The checkpoint of `step` (every rank calls it; `wait` until it is on disk)."""
    # Every rank's loader position and RNG state go into rank 0's checkpoint, after every
    # rank has checked it holds the same weights (collectives).
    check_replicas(run.replicas, step=step, device=run.device)
    per_rank = gather_object([{"loader": run.positions.state_dict(), "rng": rng_state()}])
    ema, ticket, backend, cfg = run.ema, run.ticket, run.backend, run.cfg
    nets = [backend.generator, backend.discriminator] + ([ema.module] if ema else [])
    state = {
        "step": step,
        "init_seed": run.seed,
        "backend": backend.name,
        "G_ema": ema.state_dict() if ema is not None else None,
        "prune": ticket.state_dict() if ticket is not None else None,
        "steps": backend.state_dict(),
        "loader": [r["loader"] for r in per_rank],
        "rng": [r["rng"] for r in per_rank],
        "config": cfg.model_dump(mode="json"),
        "code_version": run.version,
        "world_size": run.world,
        "data_order": data_order(cfg, run.world),
    }
    # Batch-norm statistics can turn non-finite even when every bad update was skipped;
    # never let such a state replace a good checkpoint.
    if not all_finite(run.accelerator, nets):
        run.log(f"warning: step {step}: non-finite weights or statistics; not saved")
    else:
        backend.save(state, ckpt_dir=run.ckpt_dir, step=step, writer=run.checkpoints, wait=wait)
    run.accelerator.wait_for_everyone()
