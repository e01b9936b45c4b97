"""Checkpoints: one folder per step, written atomically, pruned, found and loaded safely.

    checkpoints/step-00001000/
        state.pt      models, optimizers, scalers, EMA, step, every rank's RNG and loader
                      position, config (tensors and plain containers: no code)
        COMPLETE      written last; a folder without it is never loaded

A checkpoint is written into a hidden temporary folder, the marker goes in last, and the
folder is renamed into place, so a crash or a pre-emption mid-write leaves nothing that
looks complete (the same rule as PyTorch's distributed checkpoint and its `.metadata`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from distcolor.durable import fsync_path
from distcolor.errors import UserError, first_line

_NAME = re.compile(r"^step-(\d{8})$")
STATE, MARKER = "state.pt", "COMPLETE"


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}"


def checkpoint_step(path: Path) -> int:
    return int(_NAME.match(Path(path).name).group(1))


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary and partial ones never match)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and is_complete(p)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def staging_path(directory: Path, step: int) -> Path:
    """The hidden folder a checkpoint is written into before it is renamed into place."""
    return Path(directory) / f".{checkpoint_path(directory, step).name}.tmp"


def begin_checkpoint(directory: Path, step: int) -> Path:
    """Make a fresh, empty staging folder for step `step` (rank 0; other writers, such as
    DeepSpeed's per-rank shards, wait for it and then write into it too)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".step-*.tmp"):  # left by a crash mid-write: never complete
        shutil.rmtree(stale, ignore_errors=True)
    tmp = staging_path(directory, step)
    tmp.mkdir()
    return tmp


def finish_checkpoint(
    tmp: Path, directory: Path, *, step: int, keep_last: int, keep_every: int | None = None
) -> Path:
    """Make the staged folder a checkpoint: fsync every file, write the marker, rename it
    into place, then prune old ones."""
    directory = Path(directory)
    final = checkpoint_path(directory, step)
    files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
    for name in files:
        fsync_path(tmp / name)  # the data is on disk before the marker says so
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}) + "\n")
    fsync_path(tmp / MARKER)
    if final.exists():  # the same step again (a resumed run's end): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(directory)
    prune_checkpoints(directory, keep_last=keep_last, keep_every=keep_every)
    return final


def save_checkpoint(
    state: dict, directory: Path, *, step: int, keep_last: int, keep_every: int | None = None
) -> Path:
    """Write `state` as step-NNNNNNNN/ (temp folder, data, marker, rename), then prune."""
    tmp = begin_checkpoint(directory, step)
    torch.save(state, tmp / STATE)
    return finish_checkpoint(tmp, directory, step=step, keep_last=keep_last, keep_every=keep_every)


def prune_checkpoints(directory: Path, *, keep_last: int, keep_every: int | None) -> None:
    """Delete complete checkpoints older than the newest `keep_last`, except every
    `keep_every`-th step's."""
    for old in list_checkpoints(directory)[:-keep_last]:
        if keep_every is None or checkpoint_step(old) % keep_every:
            shutil.rmtree(old)


def load_checkpoint(path: Path) -> dict:
    """Load tensors and plain containers only (weights_only): a checkpoint cannot run code."""
    path = Path(path)
    if path.is_dir() and not is_complete(path):
        raise UserError(f"checkpoint {path} is incomplete (no {MARKER} marker)")
    file = path / STATE if path.is_dir() else path
    if not file.is_file():  # a folder, a FIFO (would block), a device, nothing
        what = "is not a regular file" if file.exists() else "does not exist"
        raise UserError(f"checkpoint {path} cannot be read: {file} {what}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file can fail anywhere in the unpickler
        raise UserError(f"checkpoint {path} cannot be read: {load_failure(err)}") from None


def load_failure(err: BaseException) -> str:
    """Why a weights-only load failed, in one line. torch's refusal of a file holding
    Python objects advises retrying with weights_only=False, which would run whatever
    code the file carries: that advice is never passed on."""
    if "weights_only" in str(err) or "Weights only" in str(err):
        return (
            "it is not a distcolor checkpoint (it holds Python objects besides tensors: it was "
            "written by something else, or altered), so it was not loaded; do not load it with "
            "weights_only=False unless you trust its origin, as that runs any code it carries"
        )
    return " ".join(first_line(err).split())[:300]


def load_parts(state: dict, parts: dict, path: Path, changed: list[str] = ()) -> None:
    """`part.load_state_dict(state[key])` for each part; a mismatch is one clear line,
    naming the first differing tensor and the `changed` model settings (`key old -> new`)."""
    try:
        for key, part in parts.items():
            part.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError) as err:
        why = f"; model settings changed since: {', '.join(changed)}" if changed else ""
        raise UserError(
            f"--resume: {path} does not fit this config ({_mismatch(err)}){why}; resume with "
            "the model settings it was trained with, or start a new run"
        ) from None


def _mismatch(err: BaseException) -> str:
    """torch's load_state_dict complaint (a header, then one line per problem) in one line."""
    problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    if not problems:
        return first_line(err)
    first = re.sub(
        r"copying a param with shape torch\.Size\((.*?)\) from checkpoint, the shape in "
        r"current model is torch\.Size\((.*?)\)\.?",
        r"checkpoint \1, this config \2",
        problems[0],
    )
    more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{first.rstrip('. ')[:240]}{more}"


def restore(candidates: list[Path], models: dict[str, nn.Module], log=print) -> tuple[dict, Path]:
    """Load the newest readable of `candidates` (oldest first) into `models`; returns its
    state and path. An unreadable newest checkpoint (a damaged disk, a bad copy) falls
    back to the one before it rather than losing the run."""
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path)
        except UserError as err:
            log(f"warning: {err}; trying the previous checkpoint")
            continue
        load_parts(state, models, path)
        log(f"resuming from {path} (step {state['step']})")
        return state, path
    raise UserError(f"--resume: no readable checkpoint among {[str(p) for p in candidates]}")
