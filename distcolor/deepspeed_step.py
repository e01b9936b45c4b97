"""The GAN step on two DeepSpeed engines (train.backend: deepspeed).

DeepSpeed wraps one model and one optimizer per engine, so each network gets its own,
built from the same config (distcolor/deepspeed_config.py) with our optimizer as a client
optimizer. The step is `distcolor/step.py`'s, done DeepSpeed's way:

    for each micro-batch:  D_engine.backward(D loss); D_engine.step()
    D frozen (requires_grad False)
    for each micro-batch:  G_engine.backward(G loss through D.module); G_engine.step()

`engine.backward` divides by the accumulation count and `engine.step` updates only at the
accumulation boundary (clipping to train.max_grad_norm, loss scaling in fp16, skipping a
step whose gradients overflow). D's parameters stop requiring grad in the G half and G's
loss goes through D's plain module, not its engine: one engine's backward must not run the
other's gradient hooks (DeepSpeed #399 and #4923: GAN losses crossing engines break ZeRO-2's
buckets). Pruning masks reach the reduced gradient pieces between the boundary backward
and the step, and the master weights after it (distcolor/zero_shards.py).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from distcolor.config import Config
from distcolor.deepspeed_config import deepspeed_config
from distcolor.errors import UserError
from distcolor.losses import GANObjective
from distcolor.optim import make_optimizer
from distcolor.precision import DTYPES
from distcolor.step import add_mean

DS_TAG = "engine"  # the tag of each engine's checkpoint inside a step folder


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as err:
        raise UserError(
            f"train.backend=deepspeed needs DeepSpeed: pip install -e '.[deepspeed]' ({err})"
        ) from None
    return deepspeed


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


class EngineUpdate:
    """One network's engine, with NetworkUpdate's counters: `skipped`, `loss_scale()`."""

    def __init__(self, engine, network) -> None:
        self.engine, self.network = engine, network  # network: zero_shards.ZeroNetwork
        self.optimizer = engine.optimizer  # its param_groups are the client optimizer's
        self.masks = None  # zero_shards.ZeroMasks while pruning

    @property
    def skipped(self) -> int:
        return int(self.engine.skipped_steps)

    def loss_scale(self) -> float | None:
        if not self.engine.fp16_enabled():
            return None
        return float(self.engine.optimizer.loss_scale)

    def micro_step(self, loss: torch.Tensor) -> tuple[bool, torch.Tensor] | None:
        """Backward and step one micro-batch; at the boundary returns (stepped, norm)."""
        engine = self.engine
        engine.backward(loss)
        boundary = engine.is_gradient_accumulation_boundary()
        if boundary and self.masks is not None and self.masks.active:
            self.masks.zero_grads()  # no gradient, hence no momentum, at pruned positions
        skipped = engine.skipped_steps
        engine.step()
        if not boundary:
            return None
        stepped = engine.skipped_steps == skipped
        if stepped and self.masks is not None and self.masks.active:
            self.masks.enforce_weights()
        norm = engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return stepped, torch.tensor(norm)


class DeepSpeedGANStep:
    """Both engines' updates for one optimizer step; the same metrics as `GANStep`."""

    def __init__(self, update_g: EngineUpdate, update_d: EngineUpdate, objective, dtype):
        self.update_g, self.update_d = update_g, update_d
        self.G, self.D = update_g.engine, update_d.engine
        self.objective, self.dtype = objective, dtype
        # ZeRO-3 in bf16/fp32 does not check gradients for inf/NaN (stages 1/2 and fp16 do
        # and skip the step): there a non-finite loss stops the run before it is applied.
        self.guard = self.G.zero_optimization_stage() == 3 and not self.G.fp16_enabled()

    @classmethod
    def build(
        cls,
        cfg: Config,
        generator: nn.Module,
        discriminator: nn.Module,
        *,
        world: int,
        precision: str | None,
    ) -> tuple[DeepSpeedGANStep, str]:
        """Two engines from cfg (collective); returns the step and its precision mode."""
        from distcolor.zero_shards import ZeroNetwork

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
        objective = GANObjective(gan_loss=tc.gan_loss, l1_weight=tc.l1_weight)
        return cls(*updates, objective, DTYPES.get(mode, torch.float32)), mode

    @property
    def optimizers(self):
        return self.update_g.optimizer, self.update_d.optimizer

    def state_dict(self) -> dict:
        return {}  # optimizers, scalers and skip counts are in each engine's own checkpoint

    def load_state_dict(self, state: dict) -> None:
        pass

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

    def __call__(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        batches = [(L.to(self.dtype), ab.to(self.dtype)) for L, ab in micro_batches]
        n = len(batches)
        metrics: dict[str, torch.Tensor] = {}

        add = partial(add_mean, metrics, count=n)

        D = self.D.module
        buffers = [b for net in (self.G.module, D) for b in net.buffers()]
        saved = [b.clone() for b in buffers]

        D.requires_grad_(True)
        fakes, d_result = [], None
        for lightness, chroma in batches:
            if n == 1:
                fake = self.G(lightness)  # kept: the G half reuses it
                fakes.append(fake)
            else:
                with torch.no_grad():
                    fake = self.G(lightness)
            d = self.objective.discriminator(self.D, lightness, chroma, fake)
            self._check_finite(d["total"])
            d_result = self.update_d.micro_step(d["total"]) or d_result
            add("loss/D", {k: d[k] for k in ("total", "real", "fake")})
            add("D", {k: d[k] for k in ("out_real", "out_fake")})

        D.requires_grad_(False)
        g_result = None
        for lightness, chroma in batches:
            fake = fakes[0] if n == 1 else self.G(lightness)
            g = self.objective.generator(D, lightness, chroma, fake)
            self._check_finite(g["total"])
            g_result = self.update_g.micro_step(g["total"]) or g_result
            add("loss/G", g)
        D.requires_grad_(True)
        (d_stepped, d_norm), (g_stepped, g_norm) = d_result, g_result
        if not (g_stepped and d_stepped):
            torch._foreach_copy_(buffers, saved)  # as GANStep: no NaN batch-norm statistics

        metrics["grad_norm/G"], metrics["grad_norm/D"] = g_norm, d_norm
        metrics["stepped/G"] = torch.tensor(float(g_stepped))
        metrics["stepped/D"] = torch.tensor(float(d_stepped))
        return metrics


def gathered(*modules: nn.Module):
    """Whole parameters of ZeRO-3 modules for the block (a collective: every rank enters);
    a no-op for anything else."""
    params = [p for m in modules for p in m.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
