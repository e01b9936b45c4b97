import io
import json
import re

import pytest
import torch
from PIL import Image
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distcolor.color import fit_chroma, gray_to_lightness, lab_inputs, rgb_to_chroma
from distcolor.tracking import Tracker, draw_sample_grid, sample_grid


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


def _console(*, terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=160, color_system=None)


INFO = "D 0.228  G 0.395 + L1 0.0389  98 img/s"


def test_plain_log_lines_when_stdout_is_not_a_terminal(tmp_path):
    console = _console(terminal=False)
    with Tracker(tmp_path, enabled=True, total_steps=4, start_step=0, console=console) as tracker:
        tracker.advance(1)  # steps without a log line print nothing
        tracker.advance(2, INFO)
        tracker.advance(3)
        tracker.advance(4, INFO)
        plain = console.file.getvalue()
    lines = plain.splitlines()
    assert len(lines) == 2
    clock, info = r"(\d+:\d\d:\d\d|-:--:--)", re.escape(INFO)
    for step, line in zip((2, 4), lines, strict=True):
        # step, losses, throughput, elapsed time, ETA: all on one line
        assert re.fullmatch(rf"step {step}/4  {info}  elapsed {clock}  ETA {clock}", line)
    assert "\x1b[" not in plain  # no cursor control in a log file


def test_live_display_on_a_terminal(tmp_path):
    console = _console(terminal=True)
    with Tracker(tmp_path, enabled=True, total_steps=4, start_step=0, console=console) as tracker:
        for step in range(1, 5):
            tracker.advance(step, INFO if step % 2 == 0 else None)
    shown = console.file.getvalue()
    assert "step 2/4" not in shown  # no plain lines: the bar carries them
    assert "\x1b[" in shown  # redrawn in place
    final = shown.rsplit("\r", 1)[-1]
    assert "train" in final and "4/4" in final and INFO in final


def test_quiet_on_other_ranks(tmp_path):
    console = _console(terminal=False)
    off = Tracker(tmp_path / "rank1", enabled=False, total_steps=4, start_step=0, console=console)
    consumed = []

    def pairs():
        consumed.append(True)
        yield "weights/G/x", torch.ones(3)

    with off:
        off.advance(2, INFO)
        off.print("hello")
        off.log_histograms(2, pairs())
        off.log_text("model", "facts", 0)
    assert console.file.getvalue() == "" and not consumed
    assert not (tmp_path / "rank1").exists()


def test_histograms_land_in_the_event_file(tmp_path):
    values = torch.randn(500, generator=torch.Generator().manual_seed(0))
    with Tracker(tmp_path, enabled=True, total_steps=4, start_step=0) as tracker:
        tracker.log_histograms(3, [("weights/G/down.0.0.weight", values)])
        tracker.log_chroma(3, torch.zeros(2, 2, 4, 4), torch.full((2, 2, 4, 4), 0.5))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    assert set(events.Tags()["histograms"]) == {
        "weights/G/down.0.0.weight",
        *(f"chroma/{c}_{w}" for c in ("a", "b", "magnitude") for w in ("predicted", "real")),
    }
    (weights,) = events.Histograms("weights/G/down.0.0.weight")
    hist = weights.histogram_value
    assert weights.step == 3 and hist.num == 500 and sum(hist.bucket) == 500
    assert hist.min == pytest.approx(values.min().item())
    assert hist.max == pytest.approx(values.max().item())
    (real_b,) = events.Histograms("chroma/b_real")
    assert real_b.histogram_value.min == pytest.approx(55.0)  # CIE units: 0.5 * 110


class _ConstantChroma(torch.nn.Module):
    """A 'generator' that predicts far more chroma than sRGB can show, in training mode."""

    def forward(self, lightness):
        assert not self.training  # grids are drawn in eval mode
        return torch.full((lightness.shape[0], 2, *lightness.shape[2:]), 0.9)


def test_training_samples_and_report_figures_show_fitted_colour():
    rgb = (torch.rand(2, 3, 8, 8) * 255).round().to(torch.uint8)
    batch = {"gray": rgb.float().mean(1, keepdim=True).round().to(torch.uint8), "rgb": rgb}
    generator = _ConstantChroma().train()
    grid = draw_sample_grid(generator, batch, torch.device("cpu"))
    assert generator.training  # its mode is restored
    lightness, _ = lab_inputs(batch, torch.device("cpu"))
    chroma = torch.full((2, 2, 8, 8), 0.9)
    fitted = sample_grid(lightness, fit_chroma(lightness, chroma), rgb)
    clipped = sample_grid(lightness, chroma, rgb)
    assert torch.equal(grid, fitted)
    assert not torch.allclose(grid[:, 8:16], clipped[:, 8:16], atol=1e-2)  # fitted, not clipped
