"""The DeepSpeed backend (train.backend: deepspeed): one engine per network.

DeepSpeed wraps one model and one optimizer per engine, so each network gets its own,
built from the same config (distcolor/backends/deepspeed_config.py) with our optimizer as a client
optimizer. The GAN step (distcolor/train/gan_step.py) runs on them DeepSpeed's way:

    for each micro-batch:  engine.backward(loss); engine.step()   (D's, then G's)

`engine.backward` divides by the accumulation count and `engine.step` updates only at the
accumulation boundary (clipping to train.max_grad_norm, loss scaling in fp16, skipping a
step whose gradients overflow). G's loss goes through D's plain module, not its engine:
one engine's backward must not run the other's gradient hooks (DeepSpeed #399 and #4923).
Pruning masks reach the reduced gradient pieces between the boundary backward and the
step, and the master weights after it (distcolor/backends/zero_shards.py).

The engines' modules are bf16/fp16 and, under ZeRO-3, partitioned with collective forward
hooks: rank-local work (samples, probes, evaluation) runs on float32 copies refreshed from
the master weights (a collective, when that work is due).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn

from distcolor.backends.base import Backend, Update, check_backend
from distcolor.backends.deepspeed_config import deepspeed_config
from distcolor.checkpoint import STATE, begin_checkpoint, finish_checkpoint, staging_path
from distcolor.config import Config
from distcolor.deepspeed_checkpoint import import_deepspeed, load_engines, save_engines
from distcolor.errors import UserError
from distcolor.models import build_models
from distcolor.train.gan_step import GANStep
from distcolor.train.losses import GANObjective
from distcolor.train.optim import make_optimizer
from distcolor.train.precision import DTYPES, Precision


def init_distributed(device: torch.device, timeout_s: float) -> None:
    """Join DeepSpeed to the process group Accelerate made, or make a one-process group
    (whose collectives time out after `timeout_s`, as Accelerate's do)."""
    deepspeed = import_deepspeed()
    if not dist.is_initialized() and "RANK" not in os.environ:
        with socket.socket() as s:  # a single process: a private loopback rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    backend = dist.get_backend() if dist.is_initialized() else None
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    deepspeed.init_distributed(
        dist_backend=backend, verbose=False, timeout=timedelta(seconds=timeout_s)
    )


class EngineUpdate(Update):
    """One network's engine: backward and step per micro-batch, the update at the boundary."""

    def __init__(self, engine, network) -> None:
        self.engine, self.network = engine, network  # network: zero_shards.ZeroNetwork
        self.module = engine.module
        self.optimizer = engine.optimizer  # its param_groups are the client optimizer's
        self.masks = None  # zero_shards.ZeroMasks while pruning
        # ZeRO-3 in bf16/fp32 does not check gradients for inf/NaN (stages 1/2 and fp16 do
        # and skip the step): there a non-finite loss stops the run before it is applied.
        self.guard = engine.zero_optimization_stage() == 3 and not engine.fp16_enabled()

    def accumulating(self, index: int, count: int) -> AbstractContextManager:
        return nullcontext()  # the engine knows its accumulation boundary

    @property
    def skipped(self) -> int:
        return int(self.engine.skipped_steps)

    def loss_scale(self) -> float | None:
        if not self.engine.fp16_enabled():
            return None
        return float(self.engine.optimizer.loss_scale)

    def backward(self, loss: torch.Tensor, *, count: int = 1) -> None:
        """The engine divides by the accumulation count itself; a step before the boundary
        only advances its micro-step counter."""
        self._check_finite(loss)
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def step(self) -> tuple[bool, torch.Tensor]:
        engine = self.engine
        if self.masks is not None and self.masks.active:
            self.masks.zero_grads()  # no gradient, hence no momentum, at pruned positions
        skipped = engine.skipped_steps
        engine.step()
        stepped = engine.skipped_steps == skipped
        if stepped and self.masks is not None and self.masks.active:
            self.masks.enforce_weights()
        norm = engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return stepped, torch.tensor(norm)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not self.guard:
            return
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        dist.all_reduce(bad)
        if bad.item():
            raise UserError(
                "training diverged: a non-finite loss under ZeRO-3, which does not skip such "
                "steps in bf16/fp32; resume from the last checkpoint with a lower learning "
                "rate, train.max_grad_norm, or fp16 / ZeRO-2 (both skip bad steps)"
            )


def deepspeed_step(
    cfg: Config,
    generator: nn.Module,
    discriminator: nn.Module,
    *,
    world: int,
    precision: str | None,
) -> tuple[GANStep, str]:
    """Two engines from cfg (collective); returns their GAN step and its precision mode."""
    from distcolor.backends.zero_shards import ZeroNetwork

    tc = cfg.train
    if tc.compile:
        raise UserError(
            "train.compile: not supported with train.backend=deepspeed (its engines wrap "
            "and partition the networks); compile with the ddp backend"
        )
    deepspeed = import_deepspeed()
    ds_config, mode = deepspeed_config(cfg, world=world, precision=precision)
    updates = []
    for net, lr in ((generator, tc.lr_g), (discriminator, tc.lr_d)):
        # DeepSpeed flattens and broadcasts parameters as contiguous bytes: channels_last
        # weights (model.channels_last) go back to the default layout here.
        for p in net.parameters():
            p.data = p.data.contiguous()
        optimizer = make_optimizer(net.parameters(), lr=lr, cfg=tc)
        engine, *_ = deepspeed.initialize(
            model=net, optimizer=optimizer, config=copy.deepcopy(ds_config)
        )
        dtype = DTYPES.get(mode)
        if dtype is not None:
            # DeepSpeed casts the parameters only; batch norm wants its running
            # statistics in the same dtype as its weights (on the CPU at least).
            for buffer in engine.module.buffers():
                if buffer.is_floating_point():
                    buffer.data = buffer.data.to(dtype)
        updates.append(EngineUpdate(engine, ZeroNetwork(engine)))
    update_g, update_d = updates
    dtype = DTYPES.get(mode, torch.float32)
    step = GANStep(
        update_g.engine,
        update_d.engine,
        update_g,
        update_d,
        GANObjective(gan_loss=tc.gan_loss, l1_weight=tc.l1_weight),
        inputs=lambda t: t.to(dtype),
        autocast=nullcontext,  # the engines' modules are in the run's dtype
    )
    return step, mode


def gathered(*modules: nn.Module) -> AbstractContextManager:
    """Whole parameters of ZeRO-3 modules for the block (a collective: every rank enters);
    a no-op for anything else."""
    params = [p for m in modules for p in m.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class DeepSpeedBackend(Backend):
    """Two engines; float32 local copies for rank-local work; checkpoints as engine shards
    plus rank 0's state.pt in one step folder."""

    name = "deepspeed"

    def __init__(
        self,
        cfg: Config,
        accelerator: Accelerator,
        generator: nn.Module,
        discriminator: nn.Module,
        *,
        world: int,
        precision: str | None,
        seed: int,
    ) -> None:
        self.accelerator, self.tc = accelerator, cfg.train
        self.step, mode = deepspeed_step(
            cfg, generator, discriminator, world=world, precision=precision
        )
        self.precision = Precision(mode, accelerator.device)
        self.engines = {"G": self.step.update_g.engine, "D": self.step.update_d.engine}
        self.generator, self.discriminator = self.step.update_g.module, self.step.update_d.module
        self.local_g, self.local_d = (
            m.to(accelerator.device) for m in build_models(cfg.model, seed=seed)
        )

    def refresh(self) -> None:
        self.local_g.load_state_dict(self.step.update_g.network.snapshot())
        self.local_d.load_state_dict(self.step.update_d.network.snapshot())

    def gathered(self, module: nn.Module) -> AbstractContextManager:
        return gathered(module)

    def pruning_networks(self) -> tuple[object, object]:
        return self.step.update_g.network, self.step.update_d.network

    @classmethod
    def check_resumable(cls, state: dict, *, world: int) -> None:
        check_backend(state, cls.name)
        if state.get("world_size") != world:
            raise UserError(
                f"--resume: the DeepSpeed checkpoint was written by {state.get('world_size')} "
                f"processes; ZeRO shards resume on the same number (this run has {world})"
            )

    def state_dict(self) -> dict:
        return {}  # optimizers, scalers and skip counts are in each engine's own checkpoint

    def load(self, state: dict, path: Path, changed: list[str]) -> None:
        load_engines(self.engines, path)

    def save(self, state: dict, *, ckpt_dir: Path, step: int, writer, wait: bool) -> None:
        """Every rank writes its engine shards into the staging folder; rank 0 adds state.pt,
        the marker and the rename (collective)."""
        main = self.accelerator.is_main_process
        tmp = staging_path(ckpt_dir, step)
        if main:
            begin_checkpoint(ckpt_dir, step)
        self.accelerator.wait_for_everyone()
        save_engines(self.engines, tmp)
        self.accelerator.wait_for_everyone()
        if main:
            torch.save(state, tmp / STATE)
            finish_checkpoint(
                tmp, ckpt_dir, step=step, keep_last=self.tc.keep_last, keep_every=self.tc.keep_every
            )

    def close(self) -> None:
        for engine in self.engines.values():
            engine.destroy()
