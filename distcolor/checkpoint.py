"""Checkpoints: atomic save, keep the last N, find the latest, load without unpickling code,
restore into models and optimizers (falling back past unreadable files)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from distcolor.errors import UserError

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary files never match)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(state: dict, directory: Path, *, step: int, keep_last: int) -> Path:
    """Write `state` as step-NNNNNNNN.pt via a temporary file + rename, then prune old ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    """Load tensors and plain containers only (weights_only): a checkpoint cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file can fail anywhere in the unpickler
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"checkpoint {path} cannot be read: {reason}") from None


def load_parts(state: dict, parts: dict, path: Path) -> None:
    """`part.load_state_dict(state[key])` for each part; a mismatch is one clear line."""
    try:
        for key, part in parts.items():
            part.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"--resume: {path} does not fit this config ({reason})") from None


def restore_latest(ckpt_dir: Path, models: dict[str, nn.Module], log=print) -> tuple[dict, Path]:
    """Load the newest readable checkpoint into `models`; returns its state and path.

    An unreadable newest checkpoint (a crash mid-copy, a full disk) falls back to the one
    before it rather than losing the run.
    """
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise UserError(f"--resume: no checkpoint in {ckpt_dir}")
    for path in reversed(found):
        try:
            state = load_checkpoint(path)
        except UserError as err:
            log(f"warning: {err}; trying the previous checkpoint")
            continue
        load_parts(state, models, path)
        log(f"resuming from {path} (step {state['step']})")
        return state, path
    raise UserError(f"--resume: no readable checkpoint in {ckpt_dir}")
