"""Distribution backends behind one interface (base.py): DDP through Accelerate, or DeepSpeed.

The backend is chosen once (train.backend, or the launcher's DeepSpeed config): the loop
and the GAN step then run the same code for both.
"""

from __future__ import annotations

from accelerate import Accelerator
from torch import nn

from distcolor.backends.base import Backend, Update
from distcolor.config import Config, TrainConfig
from distcolor.train.precision import DTYPES, resolve_precision

__all__ = ["Backend", "Update", "backend_class", "build_backend", "join_process_group"]


def join_process_group(backend: str, accelerator: Accelerator, cfg: Config) -> None:
    """DeepSpeed joins the process group Accelerate made (or makes a one-process one), before
    anyone asks for ranks."""
    if backend == "deepspeed":
        from distcolor.backends.deepspeed import init_distributed

        init_distributed(accelerator.device, cfg.train.collective_timeout_s)


def build_backend(
    backend: str,
    cfg: Config,
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    *,
    world: int,
    seed: int,
) -> Backend:
    """The networks wrapped for training by `backend` (a collective)."""
    if backend == "deepspeed":
        return backend_class(backend)(
            cfg,
            accelerator,
            generator,
            discriminator,
            world=world,
            precision=chosen_precision(cfg.train),
            seed=seed,
        )
    return backend_class(backend)(cfg, accelerator, generator, discriminator)


def backend_class(backend: str) -> type[Backend]:
    """The class of `backend` ("ddp" or "deepspeed"), for checks before anything is built."""
    if backend == "deepspeed":
        from distcolor.backends.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend
    from distcolor.backends.ddp import DDPBackend

    return DDPBackend


def chosen_precision(tc: TrainConfig) -> str | None:
    """train.mixed_precision, else `accelerate launch --mixed_precision`'s bf16/fp16, else
    None (a DeepSpeed file may then choose)."""
    if tc.mixed_precision is not None:
        return tc.mixed_precision
    launched = resolve_precision(None)
    return launched if launched in DTYPES else None
