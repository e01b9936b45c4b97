"""The default backend: both networks through `accelerator.prepare` (DDP when several
processes run, the plain networks in one), our own optimizers, loss scalers and clipping.

Optimizers are not passed to `accelerator.prepare`: its wrapper would drive Accelerate's
single shared GradScaler, where each network needs its own. Mixed precision is ours too
(distcolor/train/precision.py).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from distcolor.backends.base import Backend, Update, check_backend
from distcolor.checkpoint import load_parts
from distcolor.config import Config
from distcolor.prune.masks import Masks
from distcolor.train.gan_step import GANStep
from distcolor.train.losses import GANObjective
from distcolor.train.optim import make_optimizer
from distcolor.train.precision import Precision, resolve_precision


def compile_in_place(*networks: nn.Module, mode: str, backend: str = "inductor") -> None:
    """torch.compile each network's forward in place (`nn.Module.compile`), after DDP wraps
    it: Dynamo then sees DDP and splits the graph at its gradient buckets, so the
    all-reduces still overlap the backward (compiling under DDP would give one backward
    that hands every gradient over at its end). In place, unlike `torch.compile(net)`, adds
    no `_orig_mod.` wrapper: parameter names, state dicts and checkpoints are the same
    compiled or not. The D half (D's weights trainable) and the G half (frozen) are two
    graphs of D, compiled once each on first use. Samples, probes and evaluation run the
    unwrapped networks: eager under DDP; in a single process (no DDP wrapper) they are the
    compiled ones, and eval mode compiles once more."""
    for net in networks:
        # torch.compile takes no mode for backends other than inductor
        net.compile(backend=backend, mode=mode if backend == "inductor" else None)


class NetworkUpdate(Update):
    """One network's optimizer step: unscale (fp16), clip, check the gradients are finite,
    then step, or skip the step when they are not.

    Under DDP the gradients are already averaged over ranks, so every rank takes the same
    decision. Each network has its own GradScaler, updated once per iteration.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scaler: torch.amp.GradScaler | None,
        max_grad_norm: float | None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.accelerator = accelerator
        self.module = accelerator.unwrap_model(model) if accelerator is not None else model
        self.max_grad_norm = max_grad_norm if max_grad_norm is not None else math.inf
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._skipped = 0
        self.masks: Masks | None = None

    def accumulating(self, index: int, count: int) -> AbstractContextManager:
        """DDP all-reduces gradients only on the last micro-batch of an accumulation."""
        if index < count - 1 and self.accelerator is not None:
            return self.accelerator.no_sync(self.model)
        return nullcontext()

    def critic(self) -> AbstractContextManager[nn.Module]:
        # The wrapper under no_sync: its DDP forward would otherwise arm its reducer for a
        # backward that brings it no gradients, and the stale state would all-reduce the
        # next step's first (no_sync) micro-batch: extra traffic, and a result that depends
        # on the step before (a resumed run would differ in the last bits).
        if self.accelerator is None:
            return nullcontext(self.model)
        return _yielding(self.accelerator.no_sync(self.model), self.model)

    def backward(self, loss: torch.Tensor, *, count: int = 1) -> None:
        loss = loss / count
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> tuple[bool, torch.Tensor]:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        pruned = self.masks is not None and self.masks.active
        if pruned:  # no gradient, hence no momentum, at pruned positions
            self.masks.zero_grads()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = nn.utils.get_total_norm(grads)  # logged, and the finite check below
        finite = bool(torch.isfinite(norm))  # the one device sync of the update
        if finite and math.isfinite(self.max_grad_norm):
            nn.utils.clip_grads_with_norm_(self.params, self.max_grad_norm, norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips by itself if unscale_ saw inf/nan
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        if pruned:  # whatever the optimizer did (weight decay, eps terms): still zero
            self.masks.enforce_weights()
        self.optimizer.zero_grad(set_to_none=True)
        self._skipped += not finite
        return finite, norm.detach()

    @property
    def skipped(self) -> int:
        return self._skipped

    def loss_scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler is not None else None

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "skipped": self._skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._skipped = int(state.get("skipped", 0))


class _yielding(AbstractContextManager):
    """`context`, entered, yielding `value` (no_sync yields nothing)."""

    def __init__(self, context: AbstractContextManager, value) -> None:
        self.context, self.value = context, value

    def __enter__(self):
        self.context.__enter__()
        return self.value

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def ddp_step(
    cfg: Config,
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    precision: Precision,
) -> GANStep:
    """Wrap both networks (DDP when several processes run; compiled if asked) and give each
    an optimizer and, in fp16, a scaler: the GAN step that trains them."""
    tc = cfg.train
    generator, discriminator = accelerator.prepare(generator, discriminator)
    if tc.compile:
        compile_in_place(generator, discriminator, mode=tc.compile_mode, backend=tc.compile_backend)
    update_g, update_d = (
        NetworkUpdate(
            net,
            make_optimizer(net.parameters(), lr=lr, cfg=tc),
            scaler=precision.new_scaler(),
            max_grad_norm=tc.max_grad_norm,
            accelerator=accelerator,
        )
        for net, lr in ((generator, tc.lr_g), (discriminator, tc.lr_d))
    )
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    return GANStep(
        generator,
        discriminator,
        update_g,
        update_d,
        GANObjective(gan_loss=tc.gan_loss, l1_weight=tc.l1_weight),
        inputs=lambda t: t.contiguous(memory_format=fmt),
        autocast=precision.autocast,
    )


class DDPBackend(Backend):
    """Whole weights on every rank: the trained networks serve rank-local work directly
    (unwrapped, so that no DDP collective runs where only rank 0 draws samples)."""

    name = "ddp"

    def __init__(self, cfg: Config, accelerator: Accelerator, generator, discriminator) -> None:
        self.accelerator = accelerator
        self.precision = Precision(resolve_precision(cfg.train.mixed_precision), accelerator.device)
        self.step = ddp_step(cfg, accelerator, generator, discriminator, self.precision)
        self.generator = self.local_g = self.step.update_g.module
        self.discriminator = self.local_d = self.step.update_d.module

    def pruning_networks(self) -> tuple[nn.Module, nn.Module]:
        return self.generator, self.discriminator

    @classmethod
    def check_resumable(cls, state: dict, *, world: int) -> None:
        check_backend(state, cls.name)

    def state_dict(self) -> dict:
        return self.step.state_dict()

    def load(self, state: dict, path: Path, changed: list[str]) -> None:
        load_parts(state, {"G": self.generator, "D": self.discriminator}, path, changed)
        load_parts(state, {"steps": self.step}, path)

    def save(self, state: dict, *, ckpt_dir: Path, step: int, writer, wait: bool) -> None:
        if self.accelerator.is_main_process:
            state["G"] = self.generator.state_dict()
            state["D"] = self.discriminator.state_dict()
            # train.async_checkpoint: a host-memory snapshot now, written by a thread (after
            # the previous write); a stop waits until it is in place.
            writer.save(state, step=step)
            if wait:
                writer.wait()
