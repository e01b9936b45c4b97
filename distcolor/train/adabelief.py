"""AdaBelief optimizer (Zhuang et al., NeurIPS 2020)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class AdaBelief(Optimizer):
    """Adam whose second moment tracks (g - m)^2: the "belief" in the observed gradient.

    Per step (paper Algorithm 2; adabelief-pytorch 0.2 with rectify=False, amsgrad=False):

        m_t = b1 m_{t-1} + (1 - b1) g_t
        s_t = b2 s_{t-1} + (1 - b2) (g_t - m_t)^2 + eps
        theta_t = theta_{t-1} - lr (m_t / (1 - b1^t)) / (sqrt(s_t / (1 - b2^t)) + eps)

    Gradients that agree with their running mean keep s_t small and get large steps; noisy ones
    get small steps.

    eps is added to s_t itself (it accumulates in the state, as in the official code), so it
    sits inside the square root: the default 1e-16 there plays the role of Adam's 1e-8 outside
    it (sqrt(1e-16) = 1e-8), as in the official v0.2 default.

    weight_decay with decoupled_weight_decay=True scales theta by (1 - lr * wd) before the update
    (AdamW); with False it adds wd * theta to the gradient before the moments (L2).

    foreach=None takes the torch._foreach_* path when all of a group's params are on CUDA and the
    per-tensor loop otherwise (as torch.optim does); True forces it on any device.

    State per parameter: ``step`` (0-d float32 CPU tensor), ``exp_avg`` (m), ``exp_avg_var`` (s).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Checked here rather than in __init__ so groups with their own values are checked too.
        _check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every param with a gradient; `closure` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_vars, steps = self._init_group(group)
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            update = _foreach_adabelief if foreach else _single_tensor_adabelief
            beta1, beta2 = group["betas"]
            update(
                params,
                grads,
                exp_avgs,
                exp_avg_vars,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=group["decoupled_weight_decay"],
            )
        return loss

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[float]]:
        """The group's params that have a gradient, their state, and their new step counts."""
        params, grads, exp_avgs, exp_avg_vars, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdaBelief does not support sparse gradients")
            state = self.state[p]
            if not state:
                # On the CPU, like torch.optim.Adam's non-capturable path: reading it for the
                # bias corrections needs no device sync.
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_var"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if state["step"].device.type != "cpu":
                # A wrapper that moved the whole state to the GPU (Accelerate does on load)
                # would make every .item() below a device sync.
                state["step"] = state["step"].cpu()
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_vars.append(state["exp_avg_var"])
            steps.append(state["step"].item())
        return params, grads, exp_avgs, exp_avg_vars, steps


def _check_hyperparameters(group: dict[str, Any]) -> None:
    # `not 0 <= x` rather than `x < 0` so that NaN is rejected too.
    if not 0.0 <= group["lr"]:
        raise ValueError(f"AdaBelief: lr must be >= 0, got {group['lr']}")
    betas = group["betas"]
    if len(betas) != 2:
        raise ValueError(f"AdaBelief: betas must be a pair (beta1, beta2), got {betas}")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"AdaBelief: betas[{i}] must be in [0, 1), got {beta}")
    if not 0.0 <= group["eps"]:
        raise ValueError(f"AdaBelief: eps must be >= 0, got {group['eps']}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"AdaBelief: weight_decay must be >= 0, got {group['weight_decay']}")


def _single_tensor_adabelief(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    for param, grad, exp_avg, exp_avg_var, step in zip(
        params, grads, exp_avgs, exp_avg_vars, steps, strict=True
    ):
        if weight_decay:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        diff = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(diff, diff, value=1 - beta2).add_(eps)
        denom = (exp_avg_var.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))


def _foreach_adabelief(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    # Same operations as the loop, one kernel launch per op and bucket.
    for idx in _by_device_and_dtype(params).values():
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        ms = [exp_avgs[i] for i in idx]
        vs = [exp_avg_vars[i] for i in idx]
        if weight_decay:
            if decoupled:
                torch._foreach_mul_(ps, 1 - lr * weight_decay)
            else:
                gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        diffs = torch._foreach_sub(gs, ms)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, diffs, diffs, value=1 - beta2)
        torch._foreach_add_(vs, eps)
        denoms = torch._foreach_sqrt(vs)
        # Per-tensor scalars: params of one group can have different step counts (a param
        # without a gradient on some steps is not stepped).
        torch._foreach_div_(denoms, [math.sqrt(1 - beta2 ** steps[i]) for i in idx])
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(ps, ms, denoms, [-lr / (1 - beta1 ** steps[i]) for i in idx])


def _by_device_and_dtype(
    tensors: list[Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of `tensors` per (device, dtype): the fast foreach kernels need uniform lists."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        buckets[(t.device, t.dtype)].append(i)
    return buckets
