"""Lottery-ticket pruning inside a run: the schedule's masks on both updates, and each
round with its record (sparsity overall and per layer, threshold, held-out losses just
before and just after)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from distcolor.color import lab_inputs
from distcolor.config import Config
from distcolor.errors import UserError
from distcolor.prune.lottery import LotteryTicket
from distcolor.tracking import Tracker
from distcolor.train.gan_step import GANStep
from distcolor.train.losses import GANObjective
from distcolor.train.precision import Precision


def lottery_ticket(
    cfg: Config, generator, discriminator, step: GANStep, state: dict | None
) -> LotteryTicket | None:
    """The pruning schedule (cfg.prune), its masks attached to both networks' updates; from
    the checkpoint `state` when resuming. `generator`, `discriminator`: the backend's
    pruning view of the networks."""
    saved = (state or {}).get("prune")
    if state is not None and (saved is None) != (cfg.prune is None):
        raise UserError(
            "prune: the checkpoint was trained with pruning; resume it with its prune settings"
            if saved is not None
            else "prune: the checkpoint was trained without pruning; pruning starts with a new run"
        )
    if cfg.prune is None:
        return None
    ticket = LotteryTicket(cfg.prune, generator=generator, discriminator=discriminator)
    step.update_g.masks = ticket.masks["G"]
    step.update_d.masks = ticket.masks.get("D")
    if saved is not None:
        ticket.check_resumable(saved, step=int(state["step"]))
        ticket.load_state_dict(saved)
    else:
        ticket.start()
    return ticket


@torch.no_grad()
def probe_losses(
    G: nn.Module,
    D: nn.Module,
    objective: GANObjective,
    batch: dict | None,
    device: torch.device,
    precision: Precision,
    refresh: Callable[[], None],
) -> dict[str, float]:
    """Losses on the fixed held-out batch (rank 0), in eval mode so no statistics move.
    Every rank calls it: `refresh` brings G and D up to date (a collective under DeepSpeed)."""
    refresh()
    if batch is None:
        return {}
    modes = G.training, D.training
    G.eval(), D.eval()
    lightness, chroma = lab_inputs(batch, device)
    with precision.autocast():
        fake = G(lightness)
        g = objective.generator(D, lightness, chroma, fake)
        d = objective.discriminator(D, lightness, chroma, fake)
    G.train(modes[0]), D.train(modes[1])
    return {"G/l1": g["l1"].item(), "G/adv": g["adv"].item(), "D/total": d["total"].item()}


def prune_round(
    ticket: LotteryTicket,
    step: int,
    *,
    optimizers: dict,
    ema,
    probe: Callable[[], dict[str, float]],
    tracker: Tracker,
) -> None:
    """One pruning round with its TensorBoard record and its line."""
    before = probe()
    report = ticket.prune_round(step, optimizers=optimizers, ema=ema)
    after = probe()
    scalars = {"prune/round": float(report["round"])}
    for name in ticket.masks:
        net = report[name]
        scalars[f"prune/sparsity/{name}"] = net["sparsity"]
        scalars[f"prune/threshold/{name}"] = net["threshold"]
        for layer, share in net["layers"].items():
            scalars[f"prune/sparsity/{name}/{layer.removesuffix('.weight')}"] = share
    for key in before:
        scalars[f"prune/loss_before/{key}"] = before[key]
        scalars[f"prune/loss_after/{key}"] = after[key]
    tracker.log_scalars(step, scalars)
    change = f"; held-out L1 {before['G/l1']:.4f} -> {after['G/l1']:.4f}" if before else ""
    sparsity = ", ".join(
        f"{name} {report[name]['sparsity']:.1%} pruned (threshold {report[name]['threshold']:.3g})"
        for name in ticket.masks
    )
    tracker.print(f"step {step}: pruning round {report['round']}: {sparsity}{change}")
