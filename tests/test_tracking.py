import json

import torch
from PIL import Image

from distcolor.color import gray_to_lightness, rgb_to_chroma
from distcolor.tracking import Tracker, sample_grid


def test_sample_grid_rows_are_gray_output_original():
    rgb = (torch.rand(3, 3, 8, 8) * 255).round().to(torch.uint8)
    unit = rgb.float() / 255
    lightness = gray_to_lightness(unit.mean(1, keepdim=True))
    grid = sample_grid(lightness, rgb_to_chroma(unit), rgb)
    assert grid.shape == (3, 24, 24)
    gray_row, colour_row, original_row = grid[:, :8], grid[:, 8:16], grid[:, 16:]
    assert torch.allclose(gray_row[0], gray_row[1], atol=1e-3)  # no chroma in the top row
    assert torch.allclose(original_row[:, :, 8:16], unit[1], atol=1e-6)  # column 1 is image 1
    assert (colour_row[0] - colour_row[2]).abs().mean() > 0.01  # generated colour shows


def test_tracker_writes_only_when_enabled(tmp_path):
    off = Tracker(tmp_path / "off", enabled=False, total_steps=3, start_step=0)
    with off:
        off.log_scalars(1, {"loss/G/l1": 0.5})
        off.log_samples(1, torch.rand(3, 8, 8))
    assert not (tmp_path / "off").exists()
    with Tracker(tmp_path / "on", enabled=True, total_steps=3, start_step=0) as on:
        on.log_scalars(1, {"loss/G/l1": 0.5})
        on.log_samples(1, torch.rand(3, 8, 16))
    assert json.loads((tmp_path / "on/metrics.jsonl").read_text()) == {"step": 1, "loss/G/l1": 0.5}
    assert Image.open(tmp_path / "on/samples/step-00000001.png").size == (16, 8)
    assert any((tmp_path / "on/tb").iterdir())
