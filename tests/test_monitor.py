import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from distcolor import monitor
from distcolor.color import gray_to_lightness, rgb_to_chroma
from distcolor.config import load_config
from distcolor.data.sources import colorfulness
from distcolor.models import build_models
from distcolor.tracking import Tracker

SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def varied_rgb(count: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (B, 3, size, size) in [0, 1]: blobs of many hues."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=g)
    return nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def lab_of(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gray = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return gray_to_lightness(gray), rgb_to_chroma(rgb)


def sepia_of(rgb: torch.Tensor) -> torch.Tensor:
    gray = rgb.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return torch.einsum("ij,bjhw->bihw", SEPIA, gray).clamp(0, 1)


def test_colorfulness_is_zero_for_gray_and_high_for_saturated():
    gray = torch.rand(3, 1, 16, 16).expand(-1, 3, -1, -1)
    assert monitor.colorfulness(gray).abs().max() < 1e-9
    saturated = torch.zeros(2, 3, 16, 16)
    saturated[:, 0, :, :8] = 1.0  # half red, half blue
    saturated[:, 2, :, 8:] = 1.0
    assert (monitor.colorfulness(saturated) > 100).all()
    muted = 0.5 + 0.1 * (saturated - 0.5)
    assert (monitor.colorfulness(muted) < monitor.colorfulness(saturated) / 5).all()


def test_colorfulness_is_make_shards_measure_for_uint8_and_float():
    rgb8 = (varied_rgb(2) * 255).round().to(torch.uint8)
    expected = [colorfulness(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in rgb8]
    assert monitor.colorfulness(rgb8).tolist() == pytest.approx(expected, rel=1e-12)
    assert monitor.colorfulness(rgb8.float() / 255).tolist() == pytest.approx(expected, rel=1e-6)
    assert monitor.colorfulness(rgb8[1]).item() == pytest.approx(expected[1], rel=1e-12)
    with pytest.raises(ValueError, match="RGB"):
        monitor.colorfulness(torch.zeros(2, 1, 4, 4))


def test_ratio_is_one_for_true_chroma_and_near_zero_without_chroma():
    lightness, real = lab_of(varied_rgb())
    same = monitor.chroma_report(lightness, real, real)
    assert same["colour/ratio_output_to_original"] == pytest.approx(1.0)
    for measure in ("mean_a", "mean_b", "mean_magnitude", "hue_spread"):
        assert same[f"chroma/{measure}_predicted"] == pytest.approx(same[f"chroma/{measure}_real"])
    half = monitor.chroma_report(lightness, real * 0.5, real)["colour/ratio_output_to_original"]
    assert 0.3 < half < 0.7
    grey = monitor.chroma_report(lightness, torch.zeros_like(real), real)
    assert grey["colour/ratio_output_to_original"] < 0.01
    assert grey["chroma/mean_magnitude_predicted"] == 0.0
    assert grey["chroma/hue_spread_predicted"] == 0.0  # no chroma, no hue
    assert all(math.isfinite(v) for v in grey.values())
    # Real colours without any colourfulness: no ratio to report.
    assert "colour/ratio_output_to_original" not in monitor.chroma_report(
        lightness, real, torch.zeros_like(real)
    )


def test_sepia_prediction_shows_collapsed_hue_and_b_over_a():
    rgb = varied_rgb(6)
    lightness, real = lab_of(rgb)
    _, sepia = lab_of(sepia_of(rgb))
    report = monitor.chroma_report(lightness, sepia, real)
    assert report["chroma/hue_spread_predicted"] < 10.0  # one hue everywhere
    assert report["chroma/hue_spread_real"] > 40.0
    assert report["chroma/mean_b_predicted"] > 2 * abs(report["chroma/mean_a_predicted"])
    per_image = monitor.hue_spread(sepia)
    assert per_image.shape == (6,) and (per_image < monitor.hue_spread(real)).all()


def test_hue_spread_of_one_hue_and_of_opposite_hues():
    one = torch.zeros(2, 2, 4, 4)
    one[:, 0], one[:, 1] = 0.2, 0.1  # the same hue everywhere, any chroma
    one[1] *= torch.rand(4, 4)
    assert monitor.hue_spread(one).tolist() == pytest.approx([0.0, 0.0], abs=0.1)
    opposite = torch.zeros(1, 2, 2, 2)
    opposite[0, 0, 0], opposite[0, 0, 1] = 0.3, -0.3  # red against green: no mean hue
    assert monitor.hue_spread(opposite).item() > 200


def test_weight_histograms_one_per_conv_layer_of_the_paper_model():
    generator, discriminator = build_models(load_config("configs/paper.yaml").model, seed=0)
    pairs = list(monitor.weight_histograms({"G": generator, "D": discriminator}))
    tags = [tag for tag, _ in pairs]
    layers_g = [t for t in tags if t.startswith("weights/G/") and t.endswith(".weight")]
    layers_d = [t for t in tags if t.startswith("weights/D/") and t.endswith(".weight")]
    assert len(layers_g) == 16 and len(layers_d) == 5  # 8 down + 8 up convs; PatchGAN's 5
    assert "weights/G/down.0.0.weight" in tags
    assert {"weights/G/norm_scales", "weights/G/biases", "weights/D/biases"} <= set(tags)
    assert len(tags) == len(set(tags)) == 25
    params = sum(p.numel() for m in (generator, discriminator) for p in m.parameters())
    assert sum(v.numel() for _, v in pairs) == params  # every parameter, once


def test_weight_histograms_unwrap_and_cap():
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(10)])
    tags = [t for t, _ in monitor.weight_histograms({"M": nn.DataParallel(model)}, max_per_model=4)]
    assert tags == [
        "weights/M/0.weight",
        "weights/M/3.weight",
        "weights/M/6.weight",
        "weights/M/9.weight",
        "weights/M/biases",
    ]


def test_histogram_matches_numpy_and_skips_non_finite():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    h = monitor.histogram(values, bins=16)
    counts, edges = np.histogram(values.numpy(), bins=16)
    assert h["bucket_counts"][0] == 0 and h["bucket_counts"][1:] == counts.tolist()
    assert h["bucket_limits"] == pytest.approx(edges.tolist(), rel=1e-5)
    assert h["num"] == 1000 and h["min"] == values.min().item() and h["max"] == values.max().item()
    assert h["sum"] == pytest.approx(values.sum().item(), abs=1e-3)
    assert h["sum_squares"] == pytest.approx(values.square().sum().item(), rel=1e-5)
    odd = monitor.histogram(torch.tensor([1.0, float("nan"), 3.0, float("inf")]), bins=4)
    assert odd["num"] == 2 and (odd["min"], odd["max"]) == (1.0, 3.0)
    constant = monitor.histogram(torch.zeros(7), bins=4)
    assert sum(constant["bucket_counts"]) == 7 and constant["min"] == constant["max"] == 0.0


class CountingGenerator(nn.Module):
    """L -> ab, counting forwards and recording the mode each ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.norm = nn.BatchNorm2d(2)
        self.modes: list[bool] = []

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return torch.tanh(self.norm(self.conv(lightness)))


def fixed_batch(count: int = 3) -> dict:
    rgb = (varied_rgb(count, size=16) * 255).round().to(torch.uint8)
    gray = (rgb.float().mean(1, keepdim=True)).round().to(torch.uint8)
    return {"gray": gray, "rgb": rgb}


def test_log_monitoring_writes_scalars_and_histograms(tmp_path):
    generator, discriminator = CountingGenerator(), nn.Conv2d(3, 1, 4)
    generator.train()
    with Tracker(tmp_path, enabled=True, total_steps=10, start_step=0) as tracker:
        report = monitor.log_monitoring(
            tracker,
            5,
            sampler=generator,
            batch=fixed_batch(),
            device=torch.device("cpu"),
            models={"G": generator, "D": discriminator},
        )
    assert generator.modes == [False] and generator.training  # one eval forward, mode restored
    assert set(report) >= {"colour/ratio_output_to_original", "chroma/hue_spread_predicted"}
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    histograms = set(events.Tags()["histograms"])
    assert histograms == {
        *(f"chroma/{c}_{w}" for c in ("a", "b", "magnitude") for w in ("predicted", "real")),
        "weights/G/conv.weight",
        "weights/G/norm_scales",
        "weights/G/biases",
        "weights/D/weight",
        "weights/D/biases",
    }
    real_a = events.Histograms("chroma/a_real")[0]
    assert real_a.step == 5 and real_a.histogram_value.num == 3 * 16 * 16
    assert set(report) <= set(events.Tags()["scalars"])
    (ratio,) = events.Scalars("colour/ratio_output_to_original")
    assert ratio.step == 5
    assert ratio.value == pytest.approx(report["colour/ratio_output_to_original"])
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == pytest.approx({"step": 5, **report})


def test_log_monitoring_does_nothing_on_other_ranks(tmp_path):
    generator = CountingGenerator()
    with Tracker(tmp_path / "rank1", enabled=False, total_steps=10, start_step=0) as tracker:
        report = monitor.log_monitoring(
            tracker, 5, sampler=generator, batch=fixed_batch(), device=torch.device("cpu")
        )
        tracker.log_chroma(5, torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    assert report == {} and generator.modes == []  # not even the forward
    assert not (tmp_path / "rank1").exists()
