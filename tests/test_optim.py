import pytest
import torch
from torch import nn

from distcolor.config import load_config
from distcolor.train.adabelief import AdaBelief
from distcolor.train.optim import lr_factor, make_optimizer, set_learning_rates


def optimizers(*overrides):
    cfg = load_config(None, list(overrides))
    tc = cfg.train
    opt_g = make_optimizer(nn.Linear(3, 2).parameters(), lr=tc.lr_g, cfg=tc)
    opt_d = make_optimizer(nn.Linear(2, 1).parameters(), lr=tc.lr_d, cfg=tc)
    return (opt_g, opt_d), tc


def test_adam_with_pix2pix_defaults():
    (opt_g, opt_d), _ = optimizers()
    for opt in (opt_g, opt_d):
        assert type(opt) is torch.optim.Adam
        group = opt.param_groups[0]
        assert group["lr"] == 2e-4 and group["betas"] == (0.5, 0.999) and group["eps"] == 1e-8


def test_adabelief_and_decoupled_weight_decay_from_config():
    (opt_g, _), _ = optimizers("train.optimizer=adabelief", "train.lr_d=1e-4")
    assert isinstance(opt_g, AdaBelief)
    assert opt_g.param_groups[0]["eps"] == 1e-16  # inside the sqrt: Adam's 1e-8
    (opt_g, opt_d), _ = optimizers("train.optimizer=adabelief", "train.eps=1e-12")
    assert opt_g.param_groups[0]["eps"] == 1e-12
    (opt_g, _), _ = optimizers("train.weight_decay=0.01")
    assert type(opt_g) is torch.optim.AdamW
    (opt_g, _), _ = optimizers("train.weight_decay=0.01", "train.decoupled_weight_decay=false")
    assert type(opt_g) is torch.optim.Adam and opt_g.param_groups[0]["weight_decay"] == 0.01


def test_constant_schedule():
    _, cfg = optimizers()
    assert {lr_factor(s, cfg) for s in (1, 150, 300)} == {1.0}


def test_linear_decay_is_pix2pix_linear_policy_in_steps():
    _, cfg = optimizers("train.max_steps=10", "train.lr_schedule=linear_decay")
    factors = [lr_factor(s, cfg) for s in range(1, 11)]
    # constant for the first half (5 steps), then 1 - (s - 5) / 6
    assert factors[:5] == [1.0] * 5
    assert factors[5:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    _, cfg = optimizers(
        "train.max_steps=10", "train.lr_schedule=linear_decay", "train.lr_decay_start=8"
    )
    assert [lr_factor(s, cfg) for s in (8, 9, 10)] == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_set_learning_rates_scales_each_base_rate():
    (opt_g, opt_d), cfg = optimizers(
        "train.max_steps=4", "train.lr_schedule=linear_decay", "train.lr_d=1e-4"
    )
    set_learning_rates(opt_g, opt_d, 4, cfg)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(2e-4 / 3)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(1e-4 / 3)


def test_decay_start_must_fall_inside_the_run():
    from distcolor.errors import ConfigError

    with pytest.raises(ConfigError, match="train.lr_decay_start: 10 must be below"):
        load_config(
            None,
            ["train.max_steps=10", "train.lr_schedule=linear_decay", "train.lr_decay_start=10"],
        )
    load_config(None, ["train.max_steps=10", "train.lr_decay_start=10"])  # unused: no error
