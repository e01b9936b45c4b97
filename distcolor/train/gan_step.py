"""One GAN training step for both networks, whatever backend runs them.

    for each micro-batch:  D loss on (L, ab) vs (L, G(L).detach())  -> backward
    D update (clip, finite check, step or skip)
    for each micro-batch:  G loss: adversarial(D(L, G(L))) + l1_weight * L1  -> backward
    G update

With one micro-batch G runs once and its output serves both halves (pix2pix). With
several, the D half runs G without gradients and the G half runs it again, so no graph
is kept across micro-batches (the memory accumulation is there to save).

D's parameters stop requiring grad during the G half, so G's backward neither fills D's
gradients nor fires D's gradient hooks (DDP: "Expected to have finished reduction in the
prior iteration"; DeepSpeed #399 and #4923: a loss crossing engines breaks ZeRO-2's
buckets). G's loss sees D as its backend's `critic()` gives it.

A skipped (non-finite) update also puts back both networks' buffers as they were before
the step: a NaN batch would otherwise leave NaN batch-norm running statistics behind,
which spoil evaluation, the EMA and every later checkpoint.

How gradients are accumulated, synchronised, scaled, clipped and applied is each backend's
`Update` (distcolor/backends/).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial

import torch
from torch import nn

from distcolor.backends.base import Update
from distcolor.train.losses import GANObjective

Batch = tuple[torch.Tensor, torch.Tensor]  # (lightness (B, 1, H, W), chroma (B, 2, H, W))


def add_mean(metrics: dict, prefix: str, values: dict, *, count: int) -> None:
    """Add values / count to metrics[prefix/key]: micro-batch losses averaged over a step."""
    for key, value in values.items():
        name = f"{prefix}/{key}"
        metrics[name] = metrics.get(name, 0.0) + value.detach().float() / count


class GANStep:
    """Both networks' updates for one optimizer step; returns detached metrics.

    G and D are the modules the backend trains (DDP wrappers, DeepSpeed engines or the
    plain networks); `inputs` puts a micro-batch in the layout and dtype they take;
    `autocast` is the mixed-precision context of the forwards."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        update_g: Update,
        update_d: Update,
        objective: GANObjective,
        *,
        inputs: Callable[[torch.Tensor], torch.Tensor],
        autocast: Callable[[], AbstractContextManager],
    ) -> None:
        self.G, self.D = generator, discriminator
        self.update_g, self.update_d = update_g, update_d
        self.objective = objective
        self.inputs, self.autocast = inputs, autocast

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.update_g.optimizer, self.update_d.optimizer

    def state_dict(self) -> dict:
        return {"update_G": self.update_g.state_dict(), "update_D": self.update_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.update_g.load_state_dict(state["update_G"])
        self.update_d.load_state_dict(state["update_D"])

    def __call__(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        batches = [(self.inputs(L), self.inputs(ab)) for L, ab in micro_batches]
        n = len(batches)
        metrics: dict[str, torch.Tensor] = {}
        add = partial(add_mean, metrics, count=n)
        G, D = self.update_g.module, self.update_d.module  # the plain networks

        buffers = [b for net in (G, D) for b in net.buffers()]
        saved = [b.clone() for b in buffers]  # a few thousand floats: batch-norm statistics

        D.requires_grad_(True)
        fakes = []
        for i, (lightness, chroma) in enumerate(batches):
            with self.update_d.accumulating(i, n):
                with self.autocast():
                    if n == 1:
                        fake = self.G(lightness)  # kept: the G half reuses it
                        fakes.append(fake)
                    else:
                        with torch.no_grad():
                            fake = self.G(lightness)
                    d = self.objective.discriminator(self.D, lightness, chroma, fake)
                self.update_d.backward(d["total"], count=n)
            add("loss/D", {k: d[k] for k in ("total", "real", "fake")})
            add("D", {k: d[k] for k in ("out_real", "out_fake")})
        d_stepped, d_norm = self.update_d.step()

        D.requires_grad_(False)
        for i, (lightness, chroma) in enumerate(batches):
            with self.update_g.accumulating(i, n), self.update_d.critic() as critic:
                with self.autocast():
                    fake = fakes[0] if n == 1 else self.G(lightness)
                    g = self.objective.generator(critic, lightness, chroma, fake)
                self.update_g.backward(g["total"], count=n)
            add("loss/G", g)
        g_stepped, g_norm = self.update_g.step()
        D.requires_grad_(True)
        if not (g_stepped and d_stepped):
            torch._foreach_copy_(buffers, saved)

        metrics["grad_norm/G"], metrics["grad_norm/D"] = g_norm, d_norm
        metrics["stepped/G"] = torch.tensor(float(g_stepped))
        metrics["stepped/D"] = torch.tensor(float(d_stepped))
        return metrics
