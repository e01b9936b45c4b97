"""Continuing a run: which checkpoint, whether it fits this config, and every part of the
state that is not a network's (random generators, loader positions, the EMA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distcolor.backends import backend_class
from distcolor.checkpoint import is_complete, list_checkpoints, restore
from distcolor.config import Config
from distcolor.data.loader import LoaderState
from distcolor.errors import UserError
from distcolor.preflight import check_resume_step
from distcolor.train.ema import GeneratorEMA


@dataclass
class Resume:
    """A checkpoint to continue from, read and checked before anything is built."""

    state: dict
    path: Path
    changed: list[str] = field(default_factory=list)  # model settings changed since

    @property
    def step(self) -> int:
        return int(self.state["step"])


def resume_candidates(resume: bool | str | None, ckpt_dir: Path) -> list[Path]:
    """The checkpoints `resume` may continue from (oldest first; restore takes the newest
    readable one), or [] to start a new run."""
    found = list_checkpoints(ckpt_dir)
    partial = [p for p in ckpt_dir.glob("step-*") if p.is_dir() and not is_complete(p)]
    if resume and partial:
        print(f"warning: ignoring incomplete checkpoint folder(s): {', '.join(map(str, partial))}")
    if not resume:
        if found:
            raise UserError(
                f"run.name: {ckpt_dir.parent} already holds checkpoints; pass --resume to "
                "continue that run, or choose another run.name"
            )
        return []
    if resume == "auto":
        return found
    if resume is True or resume == "latest":
        if not found:
            raise UserError(f"--resume: no complete checkpoint in {ckpt_dir}")
        return found
    path = Path(resume)
    if not path.is_dir() or not is_complete(path):
        raise UserError(f"--resume: {path} is not a complete checkpoint folder")
    return [path]


def read_resume(
    candidates: list[Path], cfg: Config, log, *, backend: str, world: int, requeued: bool
) -> Resume:
    """The newest readable candidate, refused in one line if this run cannot continue it."""
    state, path = restore(candidates, models={}, log=log)
    changed = check_resumable(state, cfg, log, backend=backend, world=world)
    check_resume_step(state, cfg, requeued=requeued, log=log)
    return Resume(state, path, changed)


def check_resumable(state: dict, cfg: Config, log, *, backend: str, world: int) -> list[str]:
    """Refuse a resume that cannot work; warn about model settings that changed silently
    (activations, dropout, norms without weights: the saved weights still load). Returns
    those changes (`key old -> new`), for the error if the weights then do not fit."""
    saved = state.get("config", {})
    backend_class(backend).check_resumable(state, world=world)
    before = saved.get("train", {}).get("optimizer", cfg.train.optimizer)
    if before != cfg.train.optimizer:
        raise UserError(
            f"--resume: the checkpoint was trained with train.optimizer={before}; this config "
            f"says {cfg.train.optimizer} (their states differ: start a new run to switch)"
        )
    changed = changed_keys(saved.get("model", {}), cfg.model.model_dump(mode="json"), "model")
    if changed:
        log(f"warning: resuming with changed model settings: {', '.join(changed)}")
    return changed


def changed_keys(before: dict, now: dict, prefix: str) -> list[str]:
    """`prefix.key old -> new` for every differing leaf of two nested dicts."""
    changed = []
    for key, value in now.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            changed += changed_keys(old, value, f"{prefix}.{key}")
        elif old != value:
            changed.append(f"{prefix}.{key} {old} -> {value}")
    return changed


def rng_state() -> dict:
    """This rank's random generators (steps reseed from (seed, step, rank) anyway; saved so
    anything drawing outside the step, now or later, resumes exactly too)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict, rank: int, world: int) -> None:
    saved = state.get("rng") or []
    if len(saved) == world:
        torch.set_rng_state(saved[rank]["torch"])
        if "cuda" in saved[rank] and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved[rank]["cuda"])


def data_order(cfg: Config, world: int) -> dict:
    """Everything that fixes which sample each reader reads when: a resumed run continues
    the saved positions only if all of it is unchanged."""
    d = cfg.data
    return {
        "world_size": world,
        "num_workers": d.num_workers,
        "batch_size": d.batch_size,
        "shuffle_buffer": d.shuffle_buffer,
        "sampling": d.sampling,
        "source_weights": d.source_weights,
        "train_urls": d.train_urls,
        "seed": cfg.run.seed,
    }


def loader_positions(state: dict, *, rank: int, world: int, cfg: Config, log) -> LoaderState:
    """This rank's loader position from a checkpoint (every rank's is saved in it)."""
    saved = state.get("loader") or []
    positions = LoaderState(cfg.data.num_workers)
    before, now = state.get("data_order", {}), data_order(cfg, world)
    if before == now and len(saved) == world:
        positions.load_state_dict(saved[rank])
        return positions
    # Another split of the data: continue with fresh rounds rather than repeat old ones.
    changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in now.items() if before.get(k) != v)
    log(f"warning: data order changed since the checkpoint ({changed}); continuing with new epochs")
    for rank_state in saved:
        old = LoaderState(1)
        old.load_state_dict(rank_state)
        for tag, round_ in old.next_rounds().items():
            positions.first_round[tag] = max(positions.first_round.get(tag, 0), round_)
        if rank == 0:  # totals so far carry over once (the logs sum them over ranks)
            positions.skipped += old.skipped
            positions.mix.update(old.mix)
    return positions


def resume_ema(ema: GeneratorEMA, state: dict, generator: nn.Module, log) -> None:
    """The saved average, or (a checkpoint from a run without one) the restored generator."""
    if state.get("G_ema") is not None:
        ema.load_state_dict(state["G_ema"])
    else:
        log("warning: the checkpoint has no generator average; starting it from its weights")
        ema.load_state_dict(generator.state_dict())
