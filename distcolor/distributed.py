"""The one place that builds the Accelerator and answers "which rank am I"."""

from __future__ import annotations

import gc

import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn

from distcolor.config import Config


def build_accelerator(cfg: Config) -> Accelerator:
    # Our loader is never passed to prepare() (each rank reads its own shards), but keep
    # dispatch_batches off so no code path ever makes rank 0 read for everyone. Mixed
    # precision is ours (distcolor/precision.py): Accelerate's would wrap the forwards in
    # autocast and share one GradScaler between the two networks.
    return Accelerator(
        mixed_precision="no",
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
    )


def rank_and_world(accelerator: Accelerator) -> tuple[int, int]:
    """(rank, world size) from torch.distributed when it is up: Accelerate can report one
    process for some backends while the process group spans several."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return accelerator.process_index, accelerator.num_processes


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed for one step's randomness (dropout): a function of (seed, step, rank) only, so a
    resumed run draws exactly what an uninterrupted one would have."""
    return (seed * 1_000_003 + step * 8_191 + rank * 131_071) % 2**63


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy `module`'s buffers (BN running statistics) from rank `src` to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step each rank
    holds its own last update; call this (on every rank) before rank-local evaluation."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)


def shutdown(accelerator: Accelerator) -> None:
    """End a run so every process exits cleanly.

    Gloo's worker threads can still hold work objects referencing Python tensors; if they
    are destroyed during interpreter finalisation the process aborts ("terminate called
    without an active exception"). Drop our references, collect, wait for all ranks, and
    destroy the process group while the interpreter is fully alive."""
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
