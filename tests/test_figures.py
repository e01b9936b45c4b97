"""The loss figure: scalars read back from TensorBoard event files, two panels, a real PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from distcolor.errors import UserError
from distcolor.evaluate.figures import loss_figure, plot_losses, read_scalars, smooth_values

TAGS = ("loss/D/total", "loss/D/real", "loss/D/fake", "loss/G/total", "loss/G/adv", "loss/G/l1")
STEPS = list(range(1, 51))


def losses(step: int, offset: float = 0.0) -> dict[str, float]:
    """Known, consistent losses for a step: D total = (real + fake) / 2, G total = adv + 100 L1."""
    real, fake = 0.7 - step / 200 + offset, 0.6 + step / 300 + offset
    adv, l1 = 1.0 + step / 100 + offset, 0.3 - step / 500
    return {
        "loss/D/total": 0.5 * (real + fake),
        "loss/D/real": real,
        "loss/D/fake": fake,
        "loss/G/total": adv + 100 * l1,
        "loss/G/adv": adv,
        "loss/G/l1": l1,
    }


def write_run(tb_dir, steps, *, offset: float = 0.0, purge_step: int | None = None) -> None:
    writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)
    for step in steps:
        for tag, value in losses(step, offset).items():
            writer.add_scalar(tag, value, step)
    writer.close()


def f32(value: float) -> float:
    return float(np.float32(value))


def test_read_scalars_returns_every_written_point_sorted(tmp_path):
    tb = tmp_path / "run" / "tb"
    write_run(tb, STEPS)
    series = read_scalars(tb, [*TAGS, "loss/not/logged"])
    assert set(series) == set(TAGS)  # an absent tag is absent, not empty
    for tag in TAGS:
        steps, values = series[tag]
        assert steps == STEPS
        assert values == [f32(losses(s)[tag]) for s in STEPS]


def test_read_scalars_resume_restating_steps_keeps_the_newest(tmp_path):
    tb = tmp_path / "run" / "tb"
    write_run(tb, STEPS)
    write_run(tb, range(40, 51), offset=5.0, purge_step=40)  # a resume from step 39's checkpoint
    assert len(list(tb.iterdir())) == 2
    steps, values = read_scalars(tb, ["loss/D/real"])["loss/D/real"]
    assert steps == STEPS  # unique, sorted
    expected = [f32(losses(s, 5.0 if s >= 40 else 0.0)["loss/D/real"]) for s in STEPS]
    assert values == expected


def test_read_scalars_same_step_twice_newest_wall_time_wins(tmp_path):
    # Step 50 restated without a purge (TensorBoard's own out-of-order purge does not fire
    # for an equal step), so read_scalars must deduplicate it itself.
    tb = tmp_path / "run" / "tb"
    write_run(tb, STEPS)
    write_run(tb, [50], offset=5.0)
    steps, values = read_scalars(tb, ["loss/G/adv"])["loss/G/adv"]
    assert steps == STEPS
    assert values[-1] == f32(losses(50, 5.0)["loss/G/adv"])
    assert values[-2] == f32(losses(49)["loss/G/adv"])


def test_plot_losses_writes_a_wide_non_blank_png(tmp_path):
    tb = tmp_path / "run" / "tb"
    write_run(tb, STEPS)
    out = tmp_path / "report" / "losses.png"
    assert plot_losses(tb, out) == out
    assert [p.name for p in out.parent.iterdir()] == ["losses.png"]  # no temporary left
    image = Image.open(out).convert("RGB")
    width, height = image.size
    assert width > height > 200
    colours = image.getcolors(maxcolors=width * height)
    assert len(colours) > 20
    white = max(colours)  # the background, the most common colour
    assert white[1] == (255, 255, 255) and white[0] < 0.97 * width * height
    assert any(rgb == (31, 119, 180) for _, rgb in colours)  # matplotlib's C0: a curve is drawn


def test_plot_losses_missing_folder_is_a_user_error(tmp_path):
    missing = tmp_path / "nope" / "tb"
    with pytest.raises(UserError, match="nope") as info:
        plot_losses(missing, tmp_path / "out.png")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.png").exists()


def test_plot_losses_without_loss_scalars_is_a_user_error(tmp_path):
    tb = tmp_path / "other" / "tb"
    writer = SummaryWriter(log_dir=str(tb))
    writer.add_scalar("eval/psnr", 21.5, 1)
    writer.close()
    with pytest.raises(UserError, match=str(tb)) as info:
        plot_losses(tb, tmp_path / "out.png")
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        plot_losses(tmp_path / "empty", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def series_for(steps):
    return {tag: (list(steps), [losses(s)[tag] for s in steps]) for tag in TAGS}


def legend_labels(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_loss_figure_panels_and_weighted_l1():
    fig = loss_figure(series_for(STEPS), l1_weight=100.0, title="myrun", smooth=1)
    left, right = fig.axes
    assert fig.get_suptitle() == "myrun"
    assert left.get_title() == "Discriminator" and right.get_title() == "Generator"
    assert len(left.lines) == 3 and len(right.lines) == 3
    assert legend_labels(left) == ["total", "real", "fake"]
    assert legend_labels(right) == ["total", "adversarial", "L1 × 100"]
    assert left.get_xlabel() == "step" and right.get_ylabel() == "loss"
    total, adv, l1 = (np.asarray(line.get_ydata()) for line in right.lines)
    expected_l1 = [100.0 * losses(s)["loss/G/l1"] for s in STEPS]
    np.testing.assert_allclose(l1, expected_l1)
    np.testing.assert_allclose(adv + l1, total)  # the drawn parts add up to the total
    np.testing.assert_array_equal(right.lines[0].get_xdata(), STEPS)


def test_loss_figure_smoothing_draws_raw_curves_faint_without_legend():
    steps = list(range(1, 501))
    series = series_for(steps)
    noisy = [v + (0.1 if s % 2 else -0.1) for s, v in zip(*series["loss/D/total"], strict=True)]
    series["loss/D/total"] = (steps, noisy)
    fig = loss_figure(series, l1_weight=100.0, title="r")  # auto window: 500 // 50 = 10
    left, right = fig.axes
    assert len(left.lines) == 6 and len(right.lines) == 6  # raw + smoothed per curve
    assert legend_labels(left) == ["total", "real", "fake"]  # raw curves are not in the legend
    raw, smoothed = left.lines[0], left.lines[1]
    assert raw.get_alpha() < 1 and smoothed.get_alpha() in (None, 1)
    np.testing.assert_allclose(raw.get_ydata(), noisy)
    assert np.abs(np.diff(smoothed.get_ydata())).max() < 0.05  # the +-0.1 zigzag is averaged out
    assert len(loss_figure(series, smooth=1).axes[0].lines) == 3  # smooth=1: raw only


def test_smooth_values_is_a_centred_average_without_edge_bias():
    np.testing.assert_allclose(smooth_values([1, 2, 3, 4, 5], 3), [1.5, 2, 3, 4, 4.5])
    np.testing.assert_allclose(smooth_values([2.0, 2.0, 2.0, 2.0], 10), [2, 2, 2, 2])
    np.testing.assert_allclose(smooth_values([1, float("nan"), 3], 3), [1, 2, 3])
    np.testing.assert_allclose(smooth_values([1, 2, 3], 1), [1, 2, 3])
