"""The generator of a training checkpoint: which checkpoint a path means, which weights
(ema | live), its stored config and tensors all checked (`model_checks`) before anything
is built. Shared by `export` and by loading a generator to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distcolor.checkpoint import (
    MARKER,
    STATE,
    is_complete,
    latest_checkpoint,
    load_checkpoint,
)
from distcolor.deepspeed_checkpoint import consolidated_state, is_deepspeed_checkpoint
from distcolor.errors import UserError
from distcolor.model_checks import (
    StoredConfig,
    built_generator,
    checked_step,
    checkpoint_config,
)
from distcolor.models.unet import UNetGenerator

WEIGHTS = ("ema", "live")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, its state.pt, a run folder or its checkpoints/ folder (then
    the newest complete checkpoint); UserError for anything else or a partial one."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.parent.name.startswith("step-") and not is_complete(path.parent):
            raise UserError(f"checkpoint {path.parent} is incomplete (no {MARKER} marker)")
        return path
    if not path.is_dir():  # a FIFO or a device: reading it could block for ever
        raise UserError(f"checkpoint {path} is neither a folder nor a regular file")
    if is_complete(path):
        return path
    if (path / STATE).exists():
        raise UserError(f"checkpoint {path} is incomplete (no {MARKER} marker)")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    newest = latest_checkpoint(folder)
    if newest is not None:
        return newest
    if folder != path or any(p.name.startswith("step-") for p in path.iterdir()):
        raise UserError(f"checkpoint: {folder} holds no complete checkpoint")
    raise UserError(f"checkpoint {path} is not a checkpoint folder, a {STATE} or a run folder")


def select_weights(state: dict, weights: str, source: Path) -> tuple[object, str, str | None]:
    """The generator state dict to export, "ema" or "live", as stored (`model_checks`
    checks it), and a note on a fallback. (A DeepSpeed checkpoint's live G is in its
    shards: only the chosen one must be here.)"""
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {source} is not a distcolor training checkpoint (no 'G')")
    used, note = weights, None
    if weights == "ema" and state.get("G_ema") is None:
        used, note = "live", "the run kept no EMA of the generator; exported its live weights"
    chosen = state.get("G_ema" if used == "ema" else "G")
    if not isinstance(chosen, dict):
        raise UserError(f"checkpoint {source} is not a distcolor training checkpoint (no 'G')")
    return chosen, used, note


@dataclass
class CheckpointGenerator:
    """A checkpoint's generator and what the checkpoint says about it, all checked."""

    generator: UNetGenerator
    tensors: dict[str, torch.Tensor]  # the generator's own, as exported
    state: dict  # the whole checkpoint
    source: Path  # the checkpoint folder or file used
    stored: StoredConfig
    step: int
    weights: str  # "ema" or "live"
    note: str | None  # why the weights asked for were not used


def checkpoint_generator(path: Path, weights: str) -> CheckpointGenerator:
    """The generator of a checkpoint (`resolve_checkpoint` decides which), its stored config
    and tensors checked (`model_checks`) before anything is consolidated or built."""
    source = resolve_checkpoint(path)
    state = load_checkpoint(source)
    where = f"checkpoint {source}"
    stored = checkpoint_config(state, where)
    step = checked_step(state.get("step", 0), where)
    if is_deepspeed_checkpoint(state) and (weights == "live" or state.get("G_ema") is None):
        folder = source if source.is_dir() else source.parent
        state["G"] = consolidated_state(folder, "G")  # the live weights live in the shards
    chosen, used, note = select_weights(state, weights, source)
    generator, tensors = built_generator(stored.model, chosen, where)
    return CheckpointGenerator(generator, tensors, state, source, stored, step, used, note)
