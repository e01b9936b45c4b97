import pytest
import torch
from torch import nn

from distcolor.models import PatchDiscriminator, UNetGenerator
from distcolor.models.patchgan import patch_output_size


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_generator_maps_lightness_to_chroma():
    g = UNetGenerator(width=8, depth=5)
    out = g(torch.randn(3, 1, 64, 32))
    assert out.shape == (3, 2, 64, 32)
    assert out.abs().max() <= 1.0  # tanh


def test_generator_rejects_sizes_it_cannot_downsample():
    g = UNetGenerator(width=8, depth=5)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 32"):
        g(torch.randn(1, 1, 48, 32))


@pytest.mark.parametrize(("size", "layers"), [(256, 3), (64, 3), (32, 3), (64, 2)])
def test_discriminator_scores_a_grid_of_patches(size, layers):
    d = PatchDiscriminator(width=8, layers=layers)
    out = d(torch.randn(2, 3, size, size))
    side = patch_output_size(size, layers)
    assert out.shape == (2, 1, side, side)
    assert patch_output_size(256, 3) == 30  # pix2pix's 70x70 PatchGAN on 256 px


def test_paper_sizes_match_the_original_project():
    # The seed project's counts: U-Net 54,409,858 and PatchGAN 2,765,633 trainable parameters.
    assert n_params(UNetGenerator(width=64, depth=8)) == 54_409_858
    assert n_params(PatchDiscriminator(width=64, layers=3)) == 2_765_633


def test_init_is_pix2pix_normal():
    torch.manual_seed(0)
    g = UNetGenerator(width=16, depth=6)
    conv = g.down[3][1]
    assert isinstance(conv, nn.Conv2d)
    assert abs(conv.weight.std().item() - 0.02) < 0.002
    assert abs(conv.weight.mean().item()) < 0.002
