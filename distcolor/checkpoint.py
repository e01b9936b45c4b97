"""Checkpoints: atomic save, keep the last N, find the latest, load without unpickling code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

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
