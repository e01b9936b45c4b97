"""One GAN training step for both networks, under DDP, mixed precision and accumulation.

    for each micro-batch:  D loss on (L, ab) vs (L, G(L).detach())  -> backward
    D update (unscale, clip, finite check, step)
    for each micro-batch:  G loss: adversarial(D(L, G(L))) + l1_weight * L1  -> backward
    G update

With one micro-batch G runs once and its output serves both halves (pix2pix). With
several, the D half runs G without gradients and the G half runs it again, so no graph
is kept across micro-batches (the memory accumulation is there to save).

D's parameters stop requiring grad during the G half, so G's backward neither fills D's
.grad nor fires D's DDP all-reduce hooks (which would raise "Expected to have finished
reduction in the prior iteration"). Each network has its own DDP wrapper.

A skipped (non-finite) update also puts back both networks' buffers as they were before
the step: a NaN batch would otherwise leave NaN batch-norm running statistics behind,
which spoil evaluation, the EMA and every later checkpoint.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial

import torch
from accelerate import Accelerator
from torch import nn

from distcolor.config import Config
from distcolor.losses import GANObjective
from distcolor.optim import make_optimizer
from distcolor.precision import Precision
from distcolor.pruning import Masks


def add_mean(metrics: dict, prefix: str, values: dict, *, count: int) -> None:
    """Add values / count to metrics[prefix/key]: micro-batch losses averaged over a step."""
    for key, value in values.items():
        name = f"{prefix}/{key}"
        metrics[name] = metrics.get(name, 0.0) + value.detach().float() / count


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


class NetworkUpdate:
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
    ) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.max_grad_norm = max_grad_norm if max_grad_norm is not None else math.inf
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.skipped = 0
        self.masks: Masks | None = None  # pruning masks, enforced around every step

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> tuple[bool, torch.Tensor]:
        """Apply the accumulated gradients; returns (stepped, gradient norm before clipping)."""
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
        self.skipped += not finite
        return finite, norm.detach()

    def loss_scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler is not None else None

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped = int(state.get("skipped", 0))


class GANStep:
    """Both networks' updates for one optimizer step; returns detached metrics."""

    def __init__(
        self,
        accelerator: Accelerator,
        generator: nn.Module,
        discriminator: nn.Module,
        update_g: NetworkUpdate,
        update_d: NetworkUpdate,
        objective: GANObjective,
        precision: Precision,
        *,
        channels_last: bool = False,
    ) -> None:
        self.accelerator = accelerator
        self.G, self.D = generator, discriminator
        self.update_g, self.update_d = update_g, update_d
        self.objective, self.precision = objective, precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def build(
        cls,
        cfg: Config,
        accelerator: Accelerator,
        generator: nn.Module,
        discriminator: nn.Module,
        precision: Precision,
    ) -> GANStep:
        """Wrap both networks (DDP when several processes run) and give each an optimizer
        and, in fp16, a scaler. Optimizers are not passed to `accelerator.prepare`: its
        wrapper would drive Accelerate's single shared GradScaler."""
        tc = cfg.train
        generator, discriminator = accelerator.prepare(generator, discriminator)
        if tc.compile:
            compile_in_place(
                generator, discriminator, mode=tc.compile_mode, backend=tc.compile_backend
            )
        update_g, update_d = (
            NetworkUpdate(
                net,
                make_optimizer(net.parameters(), lr=lr, cfg=tc),
                scaler=precision.new_scaler(),
                max_grad_norm=tc.max_grad_norm,
            )
            for net, lr in ((generator, tc.lr_g), (discriminator, tc.lr_d))
        )
        objective = GANObjective(gan_loss=tc.gan_loss, l1_weight=tc.l1_weight)
        return cls(
            accelerator,
            generator,
            discriminator,
            update_g,
            update_d,
            objective,
            precision,
            channels_last=cfg.model.channels_last,
        )

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.update_g.optimizer, self.update_d.optimizer

    def state_dict(self) -> dict:
        return {"update_G": self.update_g.state_dict(), "update_D": self.update_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.update_g.load_state_dict(state["update_G"])
        self.update_d.load_state_dict(state["update_D"])

    def _synced_last(self, model: nn.Module, index: int, count: int):
        """DDP all-reduces gradients only on the last micro-batch of an accumulation."""
        return self.accelerator.no_sync(model) if index < count - 1 else nullcontext()

    def __call__(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        fmt = self.memory_format
        batches = [
            (L.contiguous(memory_format=fmt), ab.contiguous(memory_format=fmt))
            for L, ab in micro_batches
        ]
        n = len(batches)
        metrics: dict[str, torch.Tensor] = {}

        add = partial(add_mean, metrics, count=n)

        buffers = [b for net in (self.G, self.D) for b in net.buffers()]
        saved = [b.clone() for b in buffers]  # a few thousand floats: batch-norm statistics

        self.D.requires_grad_(True)
        fakes = []
        for i, (lightness, chroma) in enumerate(batches):
            with self._synced_last(self.D, i, n):
                with self.precision.autocast():
                    if n == 1:
                        fake = self.G(lightness)  # kept: the G half reuses it
                        fakes.append(fake)
                    else:
                        with torch.no_grad():
                            fake = self.G(lightness)
                    d = self.objective.discriminator(self.D, lightness, chroma, fake)
                self.update_d.backward(d["total"] / n)
            add("loss/D", {k: d[k] for k in ("total", "real", "fake")})
            add("D", {k: d[k] for k in ("out_real", "out_fake")})
        d_stepped, d_norm = self.update_d.step()

        self.D.requires_grad_(False)
        for i, (lightness, chroma) in enumerate(batches):
            # D under no_sync too: its DDP forward would otherwise arm its reducer for a
            # backward that brings it no gradients, and the stale state would all-reduce
            # the next step's first (no_sync) micro-batch: extra traffic, and a result that
            # depends on the step before (a resumed run would differ in the last bits).
            with self._synced_last(self.G, i, n), self.accelerator.no_sync(self.D):
                with self.precision.autocast():
                    fake = fakes[0] if n == 1 else self.G(lightness)
                    g = self.objective.generator(self.D, lightness, chroma, fake)
                self.update_g.backward(g["total"] / n)
            add("loss/G", g)
        g_stepped, g_norm = self.update_g.step()
        self.D.requires_grad_(True)
        if not (g_stepped and d_stepped):
            torch._foreach_copy_(buffers, saved)

        metrics["grad_norm/G"], metrics["grad_norm/D"] = g_norm, d_norm
        metrics["stepped/G"] = torch.tensor(float(g_stepped))
        metrics["stepped/D"] = torch.tensor(float(d_stepped))
        return metrics
