"""The one place that builds the Accelerator and answers "which rank am I"."""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs
from torch import nn

from distcolor.config import Config, TrainConfig
from distcolor.errors import UserError

_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def build_accelerator(cfg: Config) -> Accelerator:
    # Our loader is never passed to prepare() (each rank reads its own shards), but keep
    # dispatch_batches off so no code path ever makes rank 0 read for everyone. Mixed
    # precision is ours (distcolor/train/precision.py): Accelerate's would wrap the forwards in
    # autocast and share one GradScaler between the two networks.
    # Under train.backend=deepspeed the trainer builds DeepSpeed's engines itself (one per
    # network); Accelerate only starts the processes and the process group, so it must not
    # take the DeepSpeed launch for a request to wrap a single model.
    hidden = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    set_kernel_flags(cfg.train)
    try:
        return Accelerator(
            # Without a GPU, say so: otherwise a torchrun / accelerate launch of several CPU
            # processes without ACCELERATE_USE_CPU=1 gives ranks that each think they are alone.
            cpu=not torch.cuda.is_available(),
            mixed_precision="no",
            dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
            # A rank that stops answering fails the run after this long (gloo and NCCL).
            kwargs_handlers=[
                InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.collective_timeout_s))
            ],
        )
    finally:
        if hidden is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = hidden


def set_kernel_flags(tc: TrainConfig) -> None:
    """Process-wide kernel choices for GPUs (no effect on CPU runs): cuDNN autotuning, or
    only deterministic kernels. Set before the first CUDA operation: cuBLAS reads its
    workspace setting when its handle is created."""
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(tc.deterministic)
    torch.backends.cudnn.deterministic = tc.deterministic
    torch.backends.cudnn.benchmark = tc.cudnn_benchmark and not tc.deterministic


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


def parameter_checksum(module: nn.Module) -> torch.Tensor:
    """An int64 fingerprint of `module`'s parameters, bit-exact and cheap: the sum of their
    bit patterns read as integers (integer addition is exact in any order, so equal
    parameters always give equal sums and one flipped bit changes it). On the device."""
    total = None
    for p in module.parameters():
        bits = p.detach().reshape(-1).view(_INT_OF_SIZE[p.element_size()]).sum(dtype=torch.int64)
        total = bits if total is None else total + bits
    return total if total is not None else torch.zeros((), dtype=torch.int64)


def check_replicas(modules: dict[str, nn.Module], *, step: int, device: torch.device) -> None:
    """Stop the run if any rank's parameters differ from rank 0's (a collective).

    Data parallel replicas must stay bit-identical; a difference (a rank that skipped a step
    alone, a non-deterministic collective, a bad GPU) would otherwise be averaged in silently.
    Batch-norm statistics are local by design and not compared."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    mine = torch.stack([parameter_checksum(m).to(device) for m in modules.values()])
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    every = torch.stack(every).cpu()
    differ = {
        name: [r for r in range(len(every)) if every[r, i] != every[0, i]]
        for i, name in enumerate(modules)
    }
    differ = {name: ranks for name, ranks in differ.items() if ranks}
    if differ:
        detail = "; ".join(f"{name} on rank(s) {ranks}" for name, ranks in differ.items())
        raise ReplicaMismatch(
            f"ranks diverged at step {step}: parameters differ from rank 0's ({detail}); "
            "the run stops before saving this state. Resume from the last checkpoint"
        )


class ReplicaMismatch(UserError):
    """Ranks no longer hold the same weights."""
