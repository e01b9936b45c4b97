"""Video stability: the chroma stabiliser, the camera-motion estimate it uses, the flicker
metric and the test clips (tensors and frames made here; no network)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from kornia.color import lab_to_rgb
from PIL import Image

from benchmarks.video_clips import cut_frames, cut_starts, pan_zoom_frames, tone
from distcolor.color import lightness_input
from distcolor.data.synthetic import render_scene
from distcolor.errors import UserError
from distcolor.infer.flicker import FlickerMeter, frame_lab, mean_ciede2000
from distcolor.infer.motion import estimate_motion
from distcolor.infer.stabilize import DEFAULT_STRENGTH, ChromaStabilizer

R = 32


@functools.lru_cache(maxsize=8)
def scene_gray(seed: int) -> Image.Image:
    return render_scene(seed, size=256).convert("L")


def scene_lightness(seed: int, box=(32, 32, 224, 224)) -> torch.Tensor:
    """(1, 1, R, R) network input of a crop of a 256 px synthetic landscape."""
    gray = scene_gray(seed)
    small = gray.resize((R, R), Image.Resampling.BICUBIC, box=box)
    return lightness_input(torch.from_numpy(np.array(small))[None, None])


def frame_flicker(chroma: torch.Tensor) -> float:
    """Mean |change| of (B, 2, R, R) chroma between consecutive frames."""
    return float((chroma[1:] - chroma[:-1]).norm(dim=1).mean())


def test_strength_zero_returns_the_prediction_bitwise():
    lightness = torch.cat([scene_lightness(1)] * 4)
    chroma = torch.randn(4, 2, R, R)
    stabilizer = ChromaStabilizer(0)
    out = stabilizer(lightness, chroma)
    assert torch.equal(out, chroma)
    assert stabilizer.cuts == 0 and stabilizer.frames == 4


def test_static_scene_with_noisy_chroma_flickers_much_less():
    torch.manual_seed(0)
    frames = 30
    lightness = torch.cat([scene_lightness(2)] * frames)
    truth = torch.rand(1, 2, R, R) * 0.4 - 0.2
    predicted = truth + 0.05 * torch.randn(frames, 2, R, R)
    stabilizer = ChromaStabilizer()
    stable = torch.cat([stabilizer(lightness[i : i + 5], predicted[i : i + 5]) for i in (0, 5)])
    stable = torch.cat([stable, stabilizer(lightness[10:], predicted[10:])])
    assert frame_flicker(stable) < frame_flicker(predicted) / 4
    assert stabilizer.cuts == 0  # no cut in a still scene
    # a shorter memory settles within the clip: closer to the noiseless chroma (the
    # default's 50-frame memory still carries much of the first frame's noise here)
    stable = ChromaStabilizer(0.9)(lightness, predicted)
    late = slice(10, None)
    assert (stable[late] - truth).abs().mean() < 0.6 * (predicted[late] - truth).abs().mean()


def test_batches_carry_state_like_one_call():
    torch.manual_seed(1)
    lightness = torch.cat([scene_lightness(3)] * 6)
    chroma = torch.randn(6, 2, R, R) * 0.1
    whole = ChromaStabilizer()(lightness, chroma)
    split = ChromaStabilizer()
    parts = torch.cat([split(lightness[:2], chroma[:2]), split(lightness[2:], chroma[2:])])
    torch.testing.assert_close(parts, whole)


def test_a_hard_cut_starts_afresh():
    torch.manual_seed(2)
    first, second = scene_lightness(4), scene_lightness(5)
    lightness = torch.cat([first] * 5 + [second] * 3)
    chroma = torch.randn(8, 2, R, R) * 0.2
    stabilizer = ChromaStabilizer()
    out = stabilizer(lightness, chroma)
    assert stabilizer.cuts == 1
    assert torch.equal(out[5], chroma[5])  # the new scene's own prediction, nothing blended
    assert not torch.equal(out[6], chroma[6])  # and smoothing again within it


def moving_square(frames: int, *, step: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright red square crossing a dark blue background: (lightness, chroma) whose
    chroma follows the lightness exactly (what a good network predicts)."""
    lightness = torch.full((frames, 1, R, R), -0.6)
    chroma = torch.zeros(frames, 2, R, R)
    chroma[:, 1] = -0.3  # blue: b* < 0
    for t in range(frames):
        left = 4 + step * t
        lightness[t, :, 12:20, left : left + 8] = 0.6
        chroma[t, :, 12:20, left : left + 8] = torch.tensor([0.5, 0.3]).view(2, 1, 1)
    return lightness, chroma


def test_a_moving_object_keeps_its_colour():
    lightness, chroma = moving_square(8)
    for motion in (False, True):
        stabilizer = ChromaStabilizer(0.9, motion=motion)
        out = stabilizer(lightness, chroma)
        assert stabilizer.cuts == 0
        # where the square is now (and where it was), the colour is the prediction's
        assert (out - chroma).abs().max() < 0.05


def test_a_colour_change_with_the_lightness_is_followed_at_once():
    lightness = torch.cat([scene_lightness(6)] * 6)
    chroma = torch.zeros(6, 2, R, R)
    lightness[3:, :, 8:16, 8:16] += 0.5  # a lamp turns on: brighter and yellow
    chroma[3:, 1, 8:16, 8:16] = 0.6
    out = ChromaStabilizer(0.9)(lightness, chroma)
    assert (out[3, 1, 9:15, 9:15] - 0.6).abs().max() < 0.01
    assert out[3, :, 20:, 20:].abs().max() < 1e-6  # the rest stays as it was


def test_the_camera_motion_is_found_and_followed():
    # zoom in by 2% and pan by 1.5 px on a 256 px photo, as the pan/zoom clip does
    first = scene_lightness(7, (32, 32, 224, 224))
    second = scene_lightness(7, (35.4, 32.1, 223.6, 220.3))
    motion = estimate_motion(first, second)
    # the second frame's pixel at x (normalised) shows the first's at x * 188.2 / 192 + shift
    expected = [188.2 / 192 - 1, (129.5 - 128) / 96, (126.2 - 128) / 96]
    assert torch.allclose(motion, torch.tensor(expected, dtype=torch.float32), atol=3e-3)


def test_bad_strength_is_one_line_naming_the_default():
    for bad in (-0.1, 1.0, 2, math.nan, "0.5"):
        with pytest.raises(UserError, match=r"--stabilize: .* must be a number in \[0, 1\)") as err:
            ChromaStabilizer(bad)
        assert f"{DEFAULT_STRENGTH:g} is the default" in str(err.value)
    assert 0 < DEFAULT_STRENGTH < 1


def lab_frame(lab_rows: list[tuple[float, float, float]], size=(40, 60)) -> np.ndarray:
    """uint8 frame of horizontal bands of the given CIELAB colours."""
    height, width = size
    lab = torch.zeros(1, 3, height, width)
    band = height // len(lab_rows)
    for index, colour in enumerate(lab_rows):
        lab[0, :, index * band : (index + 1) * band] = torch.tensor(colour).view(3, 1, 1)
    rgb = lab_to_rgb(lab, clip=True)[0].permute(1, 2, 0)
    return (rgb * 255).round().to(torch.uint8).numpy()


def test_flicker_of_identical_frames_is_zero():
    meter = FlickerMeter()
    frame = np.asarray(render_scene(8, size=96))
    assert meter.value is None
    for _ in range(3):
        meter.update(frame.copy())
    assert meter.value == 0.0 and meter.stable_fraction == 1.0


def test_flicker_measures_a_known_chroma_oscillation():
    # bands 1-3 swing a* between +20 and -20 at L* 60; band 0 changes lightness
    # (L* 30 <-> 80) and colour: it must not count
    swing = [
        lab_frame([(30, 40, 0), (60, 20, 0), (60, 20, 0), (60, 20, 0)]),
        lab_frame([(80, -40, 0), (60, -20, 0), (60, -20, 0), (60, -20, 0)]),
    ]
    meter = FlickerMeter()
    for index in range(6):
        meter.update(swing[index % 2])
    assert meter.value == pytest.approx(40.0, abs=1.0)  # 8-bit rounding of the colours
    assert meter.stable_fraction == pytest.approx(0.75)
    assert meter.skipped_pairs == 0


def test_flicker_sampled_on_every_fourth_pair_measures_those_pairs_only():
    still = lab_frame([(60, 20, 0)] * 4)
    jump = lab_frame([(60, -20, 0)] * 4)
    # Frames 0..8: a* jumps only between frames 3 and 4 (a sampled pair) and 5 and 6 (not).
    frames = [still] * 4 + [jump, jump, still, still, still]
    every, sampled = FlickerMeter(), FlickerMeter(pair_every=4)
    for frame in frames:
        every.update(frame)
        sampled.update(frame)
    assert every.value == pytest.approx(2 * 40.0 / 8, abs=0.3)  # 2 of 8 pairs jump
    assert sampled.value == pytest.approx(40.0 / 2, abs=0.3)  # pairs (3, 4) and (7, 8)


def field_frame(shift: float, a_offset: float = 0.0, size=(64, 96)) -> np.ndarray:
    """uint8 frame of a smooth CIELAB field seen `shift` px further right: lightness
    texture (for the motion) and chroma that varies apart from it (iso-luminant edges)."""
    height, width = size
    y, x = torch.meshgrid(
        torch.arange(height).float(), torch.arange(width).float() + shift, indexing="ij"
    )
    lab = torch.stack(
        [
            55 + 20 * torch.sin(x / 5) * torch.cos(y / 7),
            25 * torch.sin(x / 6) + a_offset,
            20 * torch.cos(y / 9 + x / 11),
        ]
    )
    rgb = lab_to_rgb(lab[None], clip=True)[0].permute(1, 2, 0)
    return (rgb * 255).round().to(torch.uint8).numpy()


def same_pixel_change(frames: list[np.ndarray]) -> float:
    """The old, motion-blind measure: mean |delta a*b*| at the same pixel where L* held."""
    total, count = 0.0, 0
    for before, after in zip(frames[:-1], frames[1:], strict=True):
        lab_before, lab_after = frame_lab(before), frame_lab(after)
        held = (lab_after[0] - lab_before[0]).abs() < 1
        total += float((lab_after[1:] - lab_before[1:]).norm(dim=0)[held].sum())
        count += int(held.sum())
    return total / count


def test_flicker_follows_the_camera_motion():
    # a pan of 1.5 px a frame over a scene whose colours never change: no flicker,
    # though at the same pixel position the chroma changes where the lightness held
    panned = [field_frame(1.5 * index) for index in range(5)]
    meter = FlickerMeter()
    for frame in panned:
        meter.update(frame)
    assert meter.value < 0.5  # 8-bit rounding and the warp's interpolation
    assert same_pixel_change(panned) > 3.0
    # the same pan with a* swinging by +-10: measured as 20 along the motion
    swinging = [field_frame(1.5 * index, 10.0 * (-1) ** index) for index in range(5)]
    meter = FlickerMeter()
    for frame in swinging:
        meter.update(frame)
    assert meter.value == pytest.approx(20.0, abs=1.0)
    assert meter.skipped_pairs == 0


def test_flicker_leaves_out_cuts_and_ciede2000_compares_clips():
    photos = [render_scene(seed, size=96) for seed in (9, 10)]
    frames = cut_frames(photos, 6, size=(64, 48))
    meter = FlickerMeter()
    for frame in frames:
        meter.update(frame)
    assert cut_starts(6, 2) == [0, 3]
    assert meter.skipped_pairs == 1 and meter.value is not None
    assert mean_ciede2000(frames, frames) == 0.0
    gray = [np.repeat(np.asarray(Image.fromarray(f).convert("L"))[..., None], 3, 2) for f in frames]
    assert mean_ciede2000(gray, frames) > 3.0


def test_pan_zoom_clip_moves_by_subpixel_steps():
    frames = pan_zoom_frames(render_scene(11, size=256), 5, size=(64, 36))
    assert [f.shape for f in frames] == [(36, 64, 3)] * 5
    assert frames[0].dtype == np.uint8
    steps = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames[:-1], frames[1:], strict=True)]
    assert all(0 < step < 10 for step in steps)


def test_video_files_round_trip_with_audio(tmp_path):
    av = pytest.importorskip("av")
    from benchmarks.video_clips import read_video_frames, write_video

    frames = pan_zoom_frames(render_scene(12, size=128), 10, size=(64, 48))
    path = write_video(frames, tmp_path / "clip.mp4", fps=25, audio=tone(0.4))
    decoded = read_video_frames(path)
    assert len(decoded) == 10 and decoded[0].shape == (48, 64, 3)
    assert np.abs(decoded[5].astype(int) - frames[5]).mean() < 6
    with av.open(str(path)) as container:
        kinds = sorted(stream.type for stream in container.streams)
        assert kinds == ["audio", "video"]
        assert container.streams.video[0].average_rate == 25
