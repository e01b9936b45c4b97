from pathlib import Path

import pytest
import torch
from torch import nn

from distcolor.config import load_config
from distcolor.errors import UserError
from distcolor.models import (
    InputSizeError,
    PatchDiscriminator,
    PenalizedTanh,
    UNetGenerator,
    build_models,
    count_parameters,
)
from distcolor.sizes import patch_output_size, smallest_patchgan_input

ROOT = Path(__file__).resolve().parents[1]


def describe(block: nn.Module) -> list[tuple]:
    """Each layer of a block as (type, in, out, kernel, stride, bias) or (type, detail)."""
    rows = []
    for m in block.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            rows.append(
                (
                    type(m).__name__,
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size[0],
                    m.stride[0],
                    m.bias is not None,
                )
            )
        elif isinstance(m, nn.BatchNorm2d):
            rows.append(("BatchNorm2d", m.num_features))
        elif isinstance(m, nn.LeakyReLU):
            rows.append(("LeakyReLU", m.negative_slope))
        elif isinstance(m, nn.ReLU | nn.Tanh):
            rows.append((type(m).__name__,))
        elif isinstance(m, nn.Dropout):
            rows.append(("Dropout", m.p))
    return rows


@pytest.fixture(scope="module")
def paper_models():
    cfg = load_config(ROOT / "configs/paper.yaml")
    with torch.device("meta"):  # structure and counts only: no 230 MB of weights
        return build_models(cfg.model, seed=0)


def test_paper_config_builds_the_original_projects_parameter_counts(paper_models):
    generator, discriminator = paper_models
    assert count_parameters(generator) == 54_409_858
    assert count_parameters(discriminator) == 2_765_633


def test_paper_generator_is_the_pix2pix_unet(paper_models):
    generator, _ = paper_models
    widths = [64, 128, 256, 512, 512, 512, 512, 512]
    lrelu, relu = ("LeakyReLU", 0.2), ("ReLU",)
    down = [describe(b) for b in generator.down]
    assert down[0] == [("Conv2d", 1, 64, 4, 2, False), lrelu]  # no norm on the image side
    for k in range(1, 7):
        assert down[k] == [
            ("Conv2d", widths[k - 1], widths[k], 4, 2, False),
            ("BatchNorm2d", widths[k]),
            lrelu,
        ]
    assert down[7] == [("Conv2d", 512, 512, 4, 2, False)]  # innermost: 1x1, no norm
    up = [describe(b) for b in generator.up]
    assert up[7] == [relu, ("ConvTranspose2d", 512, 512, 4, 2, False), ("BatchNorm2d", 512)]
    for k in (4, 5, 6):  # the three inner 8x-wide blocks carry dropout
        assert up[k] == [
            relu,
            ("ConvTranspose2d", 1024, 512, 4, 2, False),
            ("BatchNorm2d", 512),
            ("Dropout", 0.5),
        ]
    for k in (1, 2, 3):
        assert up[k] == [
            relu,
            ("ConvTranspose2d", 2 * widths[k], widths[k - 1], 4, 2, False),
            ("BatchNorm2d", widths[k - 1]),
        ]
    assert up[0] == [relu, ("ConvTranspose2d", 128, 2, 4, 2, True), ("Tanh",)]


def test_paper_discriminator_is_the_70x70_patchgan(paper_models):
    _, discriminator = paper_models
    lrelu = ("LeakyReLU", 0.2)
    assert describe(discriminator) == [
        ("Conv2d", 3, 64, 4, 2, True),
        lrelu,
        ("Conv2d", 64, 128, 4, 2, False),
        ("BatchNorm2d", 128),
        lrelu,
        ("Conv2d", 128, 256, 4, 2, False),
        ("BatchNorm2d", 256),
        lrelu,
        ("Conv2d", 256, 512, 4, 1, False),
        ("BatchNorm2d", 512),
        lrelu,
        ("Conv2d", 512, 1, 4, 1, True),
    ]
    assert patch_output_size(256, 3) == 30  # a 30x30 grid of 70x70-pixel judgements


def test_generator_maps_lightness_to_chroma():
    g = UNetGenerator(width=8, depth=5)
    out = g(torch.randn(3, 1, 64, 32))
    assert out.shape == (3, 2, 64, 32)
    assert out.abs().max() <= 1.0  # tanh


def test_generator_rejects_sizes_it_cannot_downsample_with_one_clear_line():
    g = UNetGenerator(width=8, depth=5)
    with pytest.raises(InputSizeError, match=r"48x32 px; .* divisible by 2\*\*depth = 32"):
        g(torch.randn(1, 1, 48, 32))
    assert issubclass(InputSizeError, UserError)  # the CLI prints it without a traceback


def test_discriminator_rejects_inputs_smaller_than_one_patch():
    d = PatchDiscriminator(width=8, layers=3)
    assert smallest_patchgan_input(3) == 24
    d(torch.randn(1, 3, 24, 24))
    with pytest.raises(InputSizeError, match="3-layer PatchGAN needs at least 24 px"):
        d(torch.randn(1, 3, 16, 24))


@pytest.mark.parametrize(("size", "layers"), [(256, 3), (64, 3), (32, 3), (64, 2)])
def test_discriminator_scores_a_grid_of_patches(size, layers):
    d = PatchDiscriminator(width=8, layers=layers)
    out = d(torch.randn(2, 3, size, size))
    side = patch_output_size(size, layers)
    assert out.shape == (2, 1, side, side)


def test_penalized_tanh_values_and_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = PenalizedTanh(0.25)(x)
    t = torch.tanh(x.detach())
    expected = torch.where(x.detach() > 0, t, 0.25 * t)
    torch.testing.assert_close(y, expected)
    assert y[0].item() == pytest.approx(0.25 * torch.tanh(torch.tensor(-2.0)).item())
    y.sum().backward()
    slope = 1 - t**2
    torch.testing.assert_close(x.grad, torch.where(x.detach() > 0, slope, 0.25 * slope))
    away_from_kink = torch.tensor([-1.3, -0.2, 0.3, 1.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PenalizedTanh(0.25), (away_from_kink,))
    assert PenalizedTanh(1.0)(x).allclose(torch.tanh(x))  # a = 1 is plain tanh


@pytest.mark.parametrize("part", ["generator", "discriminator"])
def test_activation_is_selectable_from_config(part):
    keys = (
        ["model.generator.down_activation", "model.generator.up_activation"]
        if part == "generator"
        else ["model.discriminator.activation"]
    )
    cfg = load_config(None, [f"{k}=penalized_tanh" for k in keys] + ["model.tanh_penalty=0.3"])
    g, d = build_models(cfg.model, seed=0)
    net = g if part == "generator" else d
    hidden = [m for m in net.modules() if isinstance(m, PenalizedTanh)]
    assert hidden and all(m.a == 0.3 for m in hidden)
    assert not any(isinstance(m, nn.ReLU | nn.LeakyReLU) for m in net.modules())
    other = d if part == "generator" else g
    assert not any(isinstance(m, PenalizedTanh) for m in other.modules())
    assert isinstance(g.up[0][-1], nn.Tanh)  # the output stays tanh
    out = g(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)


def test_init_is_pix2pix_normal_and_depends_on_the_seed_alone():
    cfg = load_config(None, ["model.generator.width=16"])
    g, d = build_models(cfg.model, seed=3)
    conv = g.down[3][0]
    assert isinstance(conv, nn.Conv2d)
    assert abs(conv.weight.std().item() - 0.02) < 0.002
    assert abs(conv.weight.mean().item()) < 0.002
    norm = g.down[3][1]
    assert abs(norm.weight.mean().item() - 1.0) < 0.01 and norm.bias.abs().max() == 0
    torch.manual_seed(123)  # the global RNG does not matter ...
    g2, d2 = build_models(cfg.model, seed=3)
    for a, b in ((g, g2), (d, d2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    g3, _ = build_models(cfg.model, seed=4)  # ... the seed does
    assert not torch.equal(g3.down[3][0].weight, conv.weight)
    wider_d = load_config(None, ["model.generator.width=16", "model.discriminator.width=16"])
    g4, _ = build_models(wider_d.model, seed=3)  # G's weights do not depend on D's config
    assert torch.equal(g4.down[3][0].weight, conv.weight)
    state = torch.random.get_rng_state()
    build_models(cfg.model, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # and building leaves it alone


def test_init_std_is_configurable():
    cfg = load_config(None, ["model.init_std=0.1"])
    g, _ = build_models(cfg.model, seed=0)
    assert abs(g.down[2][0].weight.std().item() - 0.1) < 0.01


def test_channels_last_gives_the_same_outputs():
    base = ["model.generator.width=8", "model.generator.depth=5", "model.discriminator.width=8"]
    g, d = build_models(load_config(None, base).model, seed=0)
    g_cl, d_cl = build_models(load_config(None, [*base, "model.channels_last=true"]).model, seed=0)
    assert g_cl.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not g.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    g.eval(), g_cl.eval(), d.eval(), d_cl.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = g(x)
        out_cl = g_cl(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(out, out_cl, rtol=1e-4, atol=1e-5)
        lab = torch.cat([x, out], 1)
        torch.testing.assert_close(
            d(lab), d_cl(lab.contiguous(memory_format=torch.channels_last)), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_norm_dropout_and_slope_are_selectable_from_config(norm):
    cfg = load_config(
        None,
        [
            f"model.generator.norm={norm}",
            f"model.discriminator.norm={norm}",
            "model.generator.dropout=0",
            "model.leaky_slope=0.1",
            "model.generator.depth=6",
        ],
    )
    g, d = build_models(cfg.model, seed=0)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Dropout) for m in g.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    has_instance = any(isinstance(m, nn.InstanceNorm2d) for m in g.modules())
    assert has_instance == (norm == "instance")
    # without batch norm's shift every conv keeps its bias (pix2pix's use_bias)
    assert all(m.bias is not None for m in g.modules() if isinstance(m, nn.Conv2d))
    slopes = {m.negative_slope for m in [*g.modules(), *d.modules()] if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    assert g(torch.randn(2, 1, 64, 64)).shape == (2, 2, 64, 64)
