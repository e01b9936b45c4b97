import torch

from distcolor.color import gray_to_lightness, lab_to_srgb, rgb_to_chroma


def test_rgb_round_trips_through_lab():
    rgb = torch.rand(2, 3, 8, 8)
    # Lightness from the colour image's own L* (not the grayscale) must reproduce it exactly.
    from kornia.color import rgb_to_lab

    lightness = rgb_to_lab(rgb)[:, :1] / 50 - 1
    back = lab_to_srgb(lightness, rgb_to_chroma(rgb))
    assert torch.allclose(back, rgb, atol=1e-4)


def test_ranges_and_shapes():
    rgb = torch.rand(4, 3, 16, 16)
    chroma = rgb_to_chroma(rgb)
    assert chroma.shape == (4, 2, 16, 16)
    assert chroma.abs().max() <= 1.0
    # The most saturated sRGB colours stay inside tanh's range.
    corners = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1.0]])
    extreme = rgb_to_chroma(corners.view(6, 3, 1, 1))
    assert extreme.abs().max() < 1.0
    gray = torch.linspace(0, 1, 11).view(1, 1, 1, 11)
    lightness = gray_to_lightness(gray)
    assert torch.allclose(lightness[..., 0], torch.tensor(-1.0), atol=1e-4)
    assert torch.allclose(lightness[..., -1], torch.tensor(1.0), atol=1e-4)
    assert (lightness.diff(dim=-1) > 0).all()


def test_gray_has_no_chroma_and_comes_back_gray():
    gray = torch.rand(1, 1, 5, 5)
    assert rgb_to_chroma(gray.expand(-1, 3, -1, -1)).abs().max() < 1e-3
    back = lab_to_srgb(gray_to_lightness(gray), torch.zeros(1, 2, 5, 5))
    assert torch.allclose(back, gray.expand(-1, 3, -1, -1), atol=1e-4)
