"""The one place that builds the Accelerator and answers "which rank am I"."""

from __future__ import annotations

import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from distcolor.config import Config


def build_accelerator(cfg: Config) -> Accelerator:
    # Our loader is never passed to prepare() (each rank reads its own shards), but keep
    # dispatch_batches off so no code path ever makes rank 0 read for everyone.
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
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
