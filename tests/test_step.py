"""The GAN step: per-network loss scaling, skipping non-finite updates, clipping and
gradient accumulation."""

import math

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from distcolor.backends.ddp import NetworkUpdate, ddp_step
from distcolor.config import load_config
from distcolor.models import build_models
from distcolor.train.precision import Precision, resolve_precision

SMALL = ["model.generator.width=4", "model.generator.depth=5", "model.discriminator.width=4"]


def make_step(*overrides, precision="no"):
    cfg = load_config(None, [*SMALL, *overrides])
    accelerator = Accelerator(cpu=True)
    g, d = build_models(cfg.model, seed=0)
    return ddp_step(cfg, accelerator, g, d, Precision(precision, accelerator.device))


def batch(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=gen) * 2 - 1, (
        torch.rand(n, 2, 32, 32, generator=gen) - 0.5
    ) * 0.5


def test_fp16_scales_each_network_with_its_own_scaler_updated_once_per_step():
    step = make_step(precision="fp16")
    assert step.update_g.scaler is not None and step.update_g.scaler is not step.update_d.scaler
    # Start both at a scale that does not overflow this model (the default 65536 does at
    # first, which the scaler then corrects: normal fp16 behaviour).
    s_g = step.update_g.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    s_d = step.update_d.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    step([batch()])
    assert s_g.get_scale() == s_d.get_scale() == 256.0  # no overflow: unchanged
    # Force an fp16 overflow in D's backward only: D's step is skipped and its scale halves
    # once; G's scaler is untouched and G still steps.
    s_d.update(new_scale=2.0**100)
    before_d = [p.detach().clone() for p in step.D.parameters()]
    before_g = [p.detach().clone() for p in step.G.parameters()]
    metrics = step([batch(seed=1)])
    assert metrics["stepped/D"] == 0 and metrics["stepped/G"] == 1
    assert s_d.get_scale() == 2.0**99  # one update() per iteration, not two
    assert s_g.get_scale() == 256.0
    assert all(torch.equal(a, b) for a, b in zip(before_d, step.D.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, step.G.parameters(), strict=True))
    assert step.update_d.skipped == 1 and step.update_g.skipped == 0
    assert all(torch.isfinite(p).all() for p in step.D.parameters())


def test_bf16_and_fp32_need_no_scaler_and_losses_stay_float32():
    for precision in ("bf16", "no"):
        step = make_step(precision=precision)
        assert step.update_g.scaler is None and step.update_d.scaler is None
        metrics = step([batch()])
        assert metrics["loss/G/total"].dtype == torch.float32
        assert all(torch.isfinite(v) for v in metrics.values())


def test_non_finite_gradients_skip_the_update_in_every_precision():
    for precision in ("no", "bf16", "fp16"):
        step = make_step(precision=precision)
        if precision == "fp16":  # a scale this model does not overflow at (see above)
            for update in (step.update_g, step.update_d):
                update.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        lightness, chroma = batch()
        lightness[0, 0, 0, 0] = float("nan")  # a corrupt input poisons both losses
        before = {
            net: [t.detach().clone() for t in (*m.parameters(), *m.buffers())]
            for net, m in (("G", step.G), ("D", step.D))
        }
        metrics = step([(lightness, chroma)])
        assert metrics["stepped/G"] == 0 and metrics["stepped/D"] == 0, precision
        assert not math.isfinite(metrics["grad_norm/G"].item())
        # Weights and batch-norm statistics are exactly as before: no NaN left behind.
        for net, m in (("G", step.G), ("D", step.D)):
            after = (*m.parameters(), *m.buffers())
            assert all(torch.equal(a, b) for a, b in zip(before[net], after, strict=True)), net
        assert step([batch()])["stepped/G"] == 1, precision  # the next good batch trains


def test_clipping_bounds_the_update_and_reports_the_norm_before_clipping():
    layer = nn.Linear(3, 1)
    update = NetworkUpdate(
        layer, torch.optim.SGD(layer.parameters(), lr=1.0), scaler=None, max_grad_norm=0.1
    )
    before = torch.cat([p.detach().flatten().clone() for p in layer.parameters()])
    update.backward((layer(torch.full((2, 3), 100.0)) ** 2).mean())
    stepped, norm = update.step()
    after = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert stepped and norm.item() > 10
    assert (after - before).norm().item() == pytest.approx(0.1, rel=1e-4)  # lr 1 x clipped grad
    assert all(p.grad is None for p in layer.parameters())


def test_accumulating_two_micro_batches_equals_one_batch_of_both():
    # Without batch norm and dropout, a step on micro-batches (2 + 2) must equal a step on
    # the 4 images at once: the same mean losses, gradients and updates.
    plain = [
        "model.generator.norm=none",
        "model.discriminator.norm=none",
        "model.generator.dropout=0",
    ]
    whole, split = make_step(*plain), make_step(*plain, "train.grad_accum=2")
    lightness, chroma = batch()
    a = whole([(lightness, chroma)])
    b = split([(lightness[:2], chroma[:2]), (lightness[2:], chroma[2:])])
    for key in ("loss/D/total", "loss/G/l1", "loss/G/adv"):
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5), key
    for net in ("G", "D"):
        for p, q in zip(
            getattr(whole, net).parameters(), getattr(split, net).parameters(), strict=True
        ):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_state_round_trip_keeps_optimizer_scaler_and_skip_count():
    step = make_step(precision="fp16")
    step.update_d.scaler = torch.amp.GradScaler("cpu", init_scale=1e30)
    step([batch()])
    other = make_step(precision="fp16")
    other.load_state_dict(step.state_dict())
    assert other.update_d.scaler.get_scale() == step.update_d.scaler.get_scale()
    assert other.update_d.skipped == 1
    assert other.update_g.optimizer.state_dict()["state"].keys() == (
        step.update_g.optimizer.state_dict()["state"].keys()
    )


def test_precision_comes_from_config_else_from_accelerate_launch(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_precision(None) == "fp16"
    assert resolve_precision("bf16") == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert resolve_precision(None) == "no"
