import pytest
import torch
from torch import nn

from distcolor.train.ema import GeneratorEMA


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))


def test_update_averages_with_the_half_life_and_copies_buffers():
    live = net()
    ema = GeneratorEMA(live, half_life=100.0, rampup=None)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert ema.beta(images_seen=0, step_images=100) == pytest.approx(0.5)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
        live[1].running_mean.fill_(3.0)
    ema.update(live, images_seen=500, step_images=100)
    torch.testing.assert_close(ema.module[0].weight, before + 0.5)  # halfway after a half-life
    assert torch.equal(ema.module[1].running_mean, live[1].running_mean)  # buffers copied


def test_rampup_caps_the_half_life_early_in_training():
    live = net()
    ema = GeneratorEMA(live, half_life=10_000.0, rampup=0.05)
    with torch.no_grad():
        live[0].weight.add_(1.0)
    ema.update(live, images_seen=0, step_images=16)
    assert torch.equal(ema.module[0].weight, live[0].weight)  # the first step copies
    assert ema.beta(images_seen=0, step_images=16) == 0.0  # the first step copies
    assert ema.beta(images_seen=320, step_images=16) == pytest.approx(0.5)  # 0.05 * 320 = 16
    late = ema.beta(images_seen=10**7, step_images=16)
    assert late == pytest.approx(0.5 ** (16 / 10_000))


def test_state_dict_round_trip():
    live = net()
    ema = GeneratorEMA(live, half_life=10.0, rampup=None)
    with torch.no_grad():
        live[0].weight.mul_(2)
    ema.update(live, images_seen=10, step_images=5)
    other = GeneratorEMA(net(), half_life=10.0, rampup=None)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module[0].weight, ema.module[0].weight)
