"""Colouring videos end to end (real PyAV files): size, frame count, timing and audio
kept, lightness kept, every container, awkward sources, bad files skipped with one line,
nothing half-written under the final name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_lab
from PIL import Image

av = pytest.importorskip("av")
ROOT = Path(__file__).resolve().parents[1]

from distcolor.color import grayscale  # noqa: E402
from distcolor.config import load_config  # noqa: E402
from distcolor.infer.colorizer import Colorizer  # noqa: E402
from distcolor.infer.photos import Unreadable  # noqa: E402
from distcolor.infer.video import partial_path, transcode  # noqa: E402
from distcolor.models.build import build_generator  # noqa: E402
from distcolor.train.loop import train  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402
from tests.helpers import run_script  # noqa: E402
from tests.video_files import (  # noqa: E402
    audio_only,
    damaged_video,
    make_video,
    no_frames,
    rotate_mp4,
    size_change_video,
    video_facts,
)


@pytest.fixture(scope="module")
def colorizer():
    cfg = load_config(None, ["model.generator.width=8", "model.generator.depth=4"])
    generator = build_generator(cfg.model)
    torch.manual_seed(0)
    with torch.no_grad():  # untrained weights predict gray: these predict some colour
        for parameter in generator.parameters():
            parameter.normal_(0, 0.3)
    return Colorizer(generator, render_size=32, device="cpu")


def gray_of(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(grayscale(Image.fromarray(rgb)), dtype=np.float64)


def lstar(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* of uint8 (H, W, 3) sRGB."""
    unit = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None] / 255
    return rgb_to_lab(unit)[0, 0].numpy()


def gray_lstar(rgb: np.ndarray) -> np.ndarray:
    """L* of the frame's grayscale: what colorize keeps."""
    return lstar(np.repeat(gray_of(rgb).astype(np.uint8)[..., None], 3, axis=2))


def test_a_video_keeps_its_size_frames_timing_audio_and_lightness(colorizer, tmp_path):
    source = make_video(tmp_path / "home.mp4", frames=20, size=(80, 48), audio=1)
    target = tmp_path / "out" / "home.mp4"
    report = transcode(colorizer, source, target, stabilize=0.5)
    before, after = video_facts(source), video_facts(target)
    assert report.frames == len(after["frames"]) == len(before["frames"]) == 20
    assert after["times"] == before["times"]  # frame rate and duration kept
    assert after["size"] == before["size"] == (report.width, report.height) == (80, 48)
    assert report.duration_s == pytest.approx(20 / 25)
    assert after["audio"] == before["audio"] == report.audio == "aac"
    assert after["audio_packets"] == before["audio_packets"]  # copied, not re-encoded
    # Each frame's L* is its grayscale's, up to the codec's loss (4:2:0, crf 17).
    drift = [
        np.abs(gray_lstar(a) - lstar(b)).mean()
        for a, b in zip(before["frames"], after["frames"], strict=True)
    ]
    assert max(drift) < 2.0, drift
    coloured = np.stack(after["frames"]).astype(float)
    assert np.abs(coloured[..., 0] - coloured[..., 2]).mean() > 1  # colour, not gray
    assert not partial_path(target).exists()


@pytest.mark.parametrize("suffix", [".mov", ".mkv", ".avi", ".webm"])
def test_every_container_comes_back_in_its_own(colorizer, tmp_path, suffix):
    source = make_video(tmp_path / f"clip{suffix}", frames=8, audio=int(suffix != ".avi"))
    target = tmp_path / "out" / source.name
    report = transcode(colorizer, source, target, stabilize=0.5)
    facts = video_facts(target)
    assert len(facts["frames"]) == report.frames == 8
    assert facts["times"] == video_facts(source)["times"]
    assert facts["audio"] == report.audio == (None if suffix == ".avi" else facts["audio"])


@pytest.mark.parametrize(
    "kind",
    ["odd size", "gray", "10-bit", "variable frame rate", "rotated"],
)
def test_awkward_sources_are_coloured(colorizer, tmp_path, kind):
    path = tmp_path / ("clip.mp4" if kind in ("variable frame rate", "rotated") else "clip.mkv")
    options = {
        "odd size": dict(size=(63, 37), pix_fmt="yuv444p"),
        "gray": dict(pix_fmt="gray", codec="ffv1"),
        "10-bit": dict(pix_fmt="yuv420p10le"),
        "variable frame rate": dict(frames=6, pts=[0, 40, 100, 110, 300, 340]),
        "rotated": dict(),
    }[kind]
    source = make_video(path, **options)
    if kind == "rotated":
        rotate_mp4(source)
    target = tmp_path / "out" / source.name
    report = transcode(colorizer, source, target, stabilize=0.5)
    before, after = video_facts(source), video_facts(target)
    assert len(after["frames"]) == len(before["frames"]) == report.frames
    assert after["times"] == before["times"]
    width, height = before["size"]
    if kind == "rotated":  # stored landscape, shown (and now stored) upright
        assert after["size"] == (height, width) and report.rotation == 270
        # the stripes that ran across the stored frame run down the upright one
        upright = np.rot90(before["frames"][0], k=-1)
        assert np.abs(gray_lstar(upright) - lstar(after["frames"][0])).mean() < 2
    else:
        assert after["size"] == (width, height)
    if kind == "gray":
        assert report.flicker_original is None  # a gray source has no colour to measure
    if kind == "variable frame rate":
        assert after["times"] == [0.0, 0.04, 0.1, 0.11, 0.3, 0.34]


def test_files_that_are_not_videos_are_unreadable_and_leave_nothing(colorizer, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    good = make_video(tmp_path / "good.mp4", frames=6)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # no index left
    for path, reason in [
        (text, "not a video FFmpeg can read"),
        (audio_only(tmp_path / "song.mp4"), "no video stream"),
        (truncated, "not a video FFmpeg can read"),
    ]:
        target = tmp_path / "out" / path.name
        with pytest.raises(Unreadable, match=reason):
            transcode(colorizer, path, target, stabilize=0.5)
        assert not target.exists() and not partial_path(target).exists()


def test_a_stream_that_breaks_off_is_coloured_up_to_the_break(colorizer, tmp_path):
    whole = make_video(tmp_path / "long.mkv", frames=40)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    report = transcode(colorizer, cut, tmp_path / "out" / "cut.mkv", stabilize=0.5)
    assert 0 < report.frames < 40
    assert len(video_facts(tmp_path / "out" / "cut.mkv")["frames"]) == report.frames


def test_a_damaged_packet_is_skipped_and_the_rest_coloured(colorizer, tmp_path):
    source = damaged_video(tmp_path / "scratched.mkv", frames=12, bad={0, 6})
    report = transcode(colorizer, source, tmp_path / "out" / "scratched.mkv", stabilize=0.5)
    assert report.frames == len(video_facts(tmp_path / "out" / "scratched.mkv")["frames"]) == 10
    assert any(note.startswith("2 damaged packet(s) skipped") for note in report.notes)


def test_every_audio_track_is_copied_and_a_stream_with_no_frame_is_unreadable(colorizer, tmp_path):
    source = make_video(tmp_path / "dubbed.mkv", frames=8, audio=2)  # two languages
    report = transcode(colorizer, source, tmp_path / "out" / "dubbed.mkv", stabilize=0.5)
    assert report.audio == "aac,aac"
    with av.open(str(tmp_path / "out" / "dubbed.mkv")) as container:
        assert len(container.streams.audio) == 2
    empty = no_frames(tmp_path / "empty.mkv")
    with pytest.raises(Unreadable, match="no frame could be decoded"):
        transcode(colorizer, empty, tmp_path / "out" / "empty.mkv", stabilize=0.5)
    assert not (tmp_path / "out" / "empty.mkv").exists()


def test_a_size_change_mid_stream_is_scaled_to_the_first_size(colorizer, tmp_path):
    source = size_change_video(tmp_path / "spliced.mkv")
    sizes = {frame.shape[:2] for frame in video_facts(source)["frames"]}
    assert sizes == {(48, 64), (64, 96)}
    report = transcode(colorizer, source, tmp_path / "out" / "spliced.mkv", stabilize=0.5)
    after = video_facts(tmp_path / "out" / "spliced.mkv")["frames"]
    assert len(after) == report.frames == len(video_facts(source)["frames"])
    assert {frame.shape[:2] for frame in after} == {(48, 64)}
    assert any("frame size changes mid-stream" in note for note in report.notes)


def test_an_interrupted_video_leaves_no_output(colorizer, tmp_path):
    source = make_video(tmp_path / "clip.mp4", frames=30)
    target = tmp_path / "out" / "clip.mp4"
    target.parent.mkdir()
    seen = []

    def interrupt(n):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transcode(colorizer, source, target, stabilize=0.5, batch_size=4, advance=interrupt)
    assert list(target.parent.iterdir()) == []


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_shards):
    root = tmp_path_factory.mktemp("video-run")
    train(load_config(None, tiny_overrides(root, tiny_shards, **{"train.eval_images": 0})))
    return root / "runs" / "tiny"


def test_cli_colours_a_folder_of_photos_and_videos_and_counts_the_bad(run_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("L", (40, 30), 120).save(inputs / "photo.png")
    make_video(inputs / "holiday.mp4", frames=10, audio=1)
    (inputs / "notes.mp4").write_text("not a video\n")
    audio_only(inputs / "song.m4v")
    result = run_script(
        "scripts/colorize.py", "--checkpoint", str(run_dir), str(inputs), "--out",
        str(tmp_path / "out"), "--stabilize", "0.7",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["skipped"] == 2 and summary["frames"] == 10
    (video,) = summary["videos"]
    assert video["frames"] == 10 and video["audio"] == "aac" and video["flicker"] is not None
    reasons = {pathlib_name(k): v for k, v in summary["skipped_files"].items()}
    assert reasons["notes.mp4"].startswith("not a video FFmpeg can read")
    assert reasons["song.m4v"] == "no video stream"
    assert " ".join(result.stdout.split()).count("skipped ") >= 2  # each named as it happens
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 of 4 inputs have no output")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["holiday.mp4", "photo.png"]


def test_cli_refuses_a_stabilizer_strength_out_of_range(run_dir, tmp_path):
    clip = make_video(tmp_path / "clip.mp4", frames=2)
    for bad in ("1", "-0.1", "nan"):
        result = run_script(
            "scripts/colorize.py", "--checkpoint", str(run_dir), str(clip), "--out",
            str(tmp_path / "out"), "--stabilize", bad,
        )  # fmt: skip
        assert result.returncode == 2
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .endswith("--stabilize must be at least 0 and below 1")
        )


def test_without_pyav_videos_are_skipped_naming_the_extra(run_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("L", (40, 30), 120).save(inputs / "photo.png")
    make_video(inputs / "clip.mp4", frames=2)
    blocker = tmp_path / "no_av"
    blocker.mkdir()
    # A real failed import: `import av` raises ImportError, as it does without the extra.
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['av'] = None\n")
    result = subprocess.run(
        [sys.executable, "scripts/colorize.py", "--checkpoint", str(run_dir), str(inputs),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    (reason,) = summary["skipped_files"].values()
    assert reason == "colouring videos needs PyAV: pip install 'distcolor[video]'"
    assert "needs PyAV" in result.stderr.strip().splitlines()[-1]
    assert (tmp_path / "out" / "photo.png").exists()
    assert "Traceback" not in result.stderr


def test_the_python_api_colours_a_video(run_dir, tmp_path):
    import distcolor

    clip = make_video(tmp_path / "clip.mkv", frames=5)
    report = distcolor.colorize_video(clip, tmp_path / "out.mkv", run_dir, device="cpu")
    assert report.frames == 5 and (tmp_path / "out.mkv").exists()


def pathlib_name(path: str) -> str:
    return Path(path).name


def test_outputs_that_would_collide_are_refused_and_partial_videos_are_no_input(tmp_path):
    from distcolor.errors import UserError
    from distcolor.infer.files import plan_jobs

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "x.gif")
    Image.new("L", (8, 8)).save(folder / "x.gif.png")  # x.gif's output is x.gif.png too
    with pytest.raises(UserError, match="would both be written to"):
        plan_jobs([folder], tmp_path / "out")
    (folder / "x.gif").unlink()
    make_video(folder / ".clip.partial.mp4", frames=2)  # left by a killed run
    assert [job.source.name for job in plan_jobs([folder], tmp_path / "out")] == ["x.gif.png"]


def test_sigterm_mid_video_leaves_nothing_under_out(run_dir, tmp_path):
    import signal
    import time

    clip = make_video(tmp_path / "long.mp4", frames=400, size=(320, 240))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "scripts/colorize.py", "--checkpoint", str(run_dir), str(clip),
         "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / ".long.partial.mp4").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / ".long.partial.mp4").exists(), process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "error: terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []
