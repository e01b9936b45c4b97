"""What training asks of a distribution backend, so that the loop and the GAN step never
ask which one runs: DDP through Accelerate (ddp.py) or two DeepSpeed engines (deepspeed.py).

A backend owns
- the wrapped networks the step trains, and one `Update` per network (accumulate, backward,
  clip, step or skip, loss scale);
- rank-local float32 copies for samples, probes and evaluation, and their refresh;
- whole weights for the EMA (`gathered`) and the pruning view of its parameters;
- its part of a checkpoint (save, load, the resume checks) and its teardown.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn


class Update(ABC):
    """One network's optimizer update over the micro-batches of a step."""

    module: nn.Module  # the plain network (unwrapped)
    optimizer: torch.optim.Optimizer
    masks = None  # pruning masks, enforced around every step (set by the lottery ticket)

    @abstractmethod
    def accumulating(self, index: int, count: int) -> AbstractContextManager:
        """The context of micro-batch `index` of `count`'s forward and backward."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, *, count: int = 1) -> None:
        """Accumulate the gradients of one micro-batch's loss (of `count`)."""

    @abstractmethod
    def step(self) -> tuple[bool, torch.Tensor]:
        """Apply the accumulated gradients; (stepped, gradient norm before clipping)."""

    def critic(self) -> AbstractContextManager[nn.Module]:
        """This network as the other one's loss sees it (frozen: no gradient of its own)."""
        return nullcontext(self.module)

    @property
    @abstractmethod
    def skipped(self) -> int:
        """Updates skipped so far (non-finite gradients)."""

    @abstractmethod
    def loss_scale(self) -> float | None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None  # nothing beyond what the optimizer holds, by default


class Backend(ABC):
    """The networks as one backend trains them; `step` is their GAN step."""

    name: str
    step: object  # distcolor.train.gan_step.GANStep
    generator: nn.Module  # the plain networks, whole or (ZeRO-3) partitioned
    discriminator: nn.Module
    local_g: nn.Module  # float32 copies for rank-local work: samples, probes, evaluation
    local_d: nn.Module
    precision: object  # distcolor.train.precision.Precision

    def refresh(self) -> None:
        """Bring local_g and local_d up to the trained weights (may be a collective: every
        rank calls it at the same points)."""
        return None  # the trained networks are the local ones, by default

    def gathered(self, module: nn.Module) -> AbstractContextManager:
        """`module`'s whole weights for the block (a collective where they are sharded)."""
        return nullcontext()

    @abstractmethod
    def pruning_networks(self) -> tuple[object, object]:
        """(generator, discriminator) as the lottery ticket prunes them: plain modules, or
        views of sharded master weights."""

    @classmethod
    @abstractmethod
    def check_resumable(cls, state: dict, *, world: int) -> None:
        """Refuse, in one line, a checkpoint this backend cannot continue (before anything
        is built)."""

    @abstractmethod
    def load(self, state: dict, path: Path, changed: list[str]) -> None:
        """Restore this backend's part of the checkpoint at `path` (`state` its state.pt)."""

    @abstractmethod
    def save(self, state: dict, *, ckpt_dir: Path, step: int, writer, wait: bool) -> None:
        """Write the checkpoint of `step`: `state` plus this backend's part (every rank calls
        it); `writer` is the run's CheckpointWriter; `wait` until it is on disk. The caller
        then waits for every rank."""

    def close(self) -> None:
        """Release what the backend holds (engines, buffers)."""
        return None


def check_backend(state: dict, backend: str) -> None:
    """A checkpoint continues only under the backend that wrote it."""
    before = state.get("backend", "ddp")
    if before != backend:
        from distcolor.errors import UserError

        raise UserError(
            f"--resume: the checkpoint was written by train.backend={before}; this run uses "
            f"{backend} (their checkpoints differ: resume with {before}, or start a new run "
            "from an export)"
        )
