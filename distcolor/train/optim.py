"""Optimizers for the two networks and their learning-rate schedule."""

from __future__ import annotations

import torch

from distcolor.config import TrainConfig
from distcolor.train.adabelief import AdaBelief

DEFAULT_EPS = {"adam": 1e-8, "adabelief": 1e-16}
"""AdaBelief's eps sits inside the square root, so 1e-16 there matches Adam's 1e-8."""


def make_optimizer(params, *, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (AdamW when weight decay is decoupled) or AdaBelief, from `cfg`."""
    betas = (cfg.betas[0], cfg.betas[1])
    eps = cfg.eps if cfg.eps is not None else DEFAULT_EPS[cfg.optimizer]
    wd = cfg.weight_decay
    if cfg.optimizer == "adabelief":
        return AdaBelief(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=wd,
            decoupled_weight_decay=cfg.decoupled_weight_decay,
        )
    params = list(params)
    # On GPUs one fused kernel per step instead of a dozen foreach launches (CPU runs keep
    # the foreach path, and with it the golden runs).
    fused = bool(params) and all(p.is_cuda for p in params)
    adam = torch.optim.AdamW if wd and cfg.decoupled_weight_decay else torch.optim.Adam
    return adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (1-based).

    constant: 1. linear_decay (pix2pix's "linear" policy, in steps rather than epochs): 1 up
    to lr_decay_start, then 1 - (step - start) / (max_steps - start + 1), so the last step
    still learns at 1 / (max_steps - start + 1) of the base rate.
    """
    if cfg.lr_schedule == "constant":
        return 1.0
    start = cfg.lr_decay_start if cfg.lr_decay_start is not None else cfg.max_steps // 2
    return 1.0 - max(0, step - start) / (cfg.max_steps - start + 1)


def set_learning_rates(
    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, step: int, cfg: TrainConfig
) -> None:
    """Set both optimizers' rates for `step`. A pure function of the step, not a scheduler
    object: nothing to checkpoint, a resumed run gets the same rates, and Accelerate's
    scheduler wrapper (which steps once per process) is not involved."""
    factor = lr_factor(step, cfg)
    for opt, base in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
        for group in opt.param_groups:
            group["lr"] = base * factor
