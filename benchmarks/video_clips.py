"""Test clips for video colorize: a slow pan and zoom over a still photo, scenes with hard
cuts, and writing/reading video files with PyAV (the `video` extra).

The pan/zoom clip shows one still scene throughout, moved by subpixel steps (bicubic
resampling of a moving, shrinking crop window), so in the original colour clip the
chroma of a region only changes where the camera's motion moves an edge over it: any
other chroma change in a colorized version is flicker. The cuts clip joins a few such
slow shots of different scenes with hard cuts between them.

    frames = pan_zoom_frames(render_scene(7, size=512), 50)
    write_video(frames, "pan.mp4", audio=tone(2.0))
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from distcolor.data.synthetic import render_scene

SIZE = (640, 360)


def pan_zoom_frames(
    photo: Image.Image,
    count: int,
    size: tuple[int, int] = SIZE,
    *,
    pan: tuple[float, float] = (0.12, 0.05),
    zoom: float = 1.15,
) -> list[np.ndarray]:
    """`count` uint8 (height, width, 3) frames of a camera moving over `photo`: the crop
    window (the frame's aspect ratio, 70% of the photo at the start) moves its centre by
    `pan` (fractions of the photo's width and height) and narrows by `zoom` overall,
    linearly, so each frame moves by a fraction of a pixel to a few pixels."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    photo = photo.convert("RGB")
    width, height = size
    photo_w, photo_h = photo.size
    start_w = 0.7 * min(photo_w, photo_h * width / height)
    frames = []
    for index in range(count):
        t = index / max(1, count - 1)
        window_w = start_w / (1 + (zoom - 1) * t)
        window_h = window_w * height / width
        cx = photo_w * (0.5 + pan[0] * (t - 0.5))
        cy = photo_h * (0.5 + pan[1] * (t - 0.5))
        box = (cx - window_w / 2, cy - window_h / 2, cx + window_w / 2, cy + window_h / 2)
        frames.append(np.asarray(photo.resize(size, Image.Resampling.BICUBIC, box=box)))
    return frames


def cut_frames(
    photos: Sequence[Image.Image], count: int, size: tuple[int, int] = SIZE
) -> list[np.ndarray]:
    """`count` frames: a slow pan/zoom over each photo in turn (shots as equal as count
    allows, the pan's direction alternating), joined by hard cuts at `cut_starts`."""
    if not photos or count < len(photos):
        raise ValueError(f"{count} frames cannot hold {len(photos)} shots")
    starts = cut_starts(count, len(photos)) + [count]
    frames = []
    for shot, photo in enumerate(photos):
        direction = 1 if shot % 2 == 0 else -1
        frames += pan_zoom_frames(
            photo,
            starts[shot + 1] - starts[shot],
            size,
            pan=(0.04 * direction, -0.02 * direction),
            zoom=1.05,
        )
    return frames


def cut_starts(count: int, shots: int) -> list[int]:
    """The first frame of each shot of `cut_frames(photos, count)` (the first is 0)."""
    return [count * shot // shots for shot in range(shots)]


def scene_photos(count: int, *, side: int = 512, first_seed: int = 11) -> list[Image.Image]:
    """`count` colour synthetic landscapes, `side` px square, as still photos to film."""
    return [render_scene(first_seed + index, size=side) for index in range(count)]


def tone(seconds: float, rate: int = 44100, *, hz: float = 440.0) -> tuple[np.ndarray, int]:
    """A stereo sine tone: ((2, n) float32 samples in [-1, 1], rate), for write_video."""
    time = np.arange(round(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * hz * time)).astype(np.float32)
    return np.stack([wave, wave]), rate


def write_video(
    frames: Sequence[np.ndarray],
    path: str | Path,
    fps: int = 25,
    codec: str = "libx264",
    audio: tuple[np.ndarray, int] | None = None,
    *,
    pix_fmt: str = "yuv420p",
    crf: int = 18,
) -> Path:
    """Encode uint8 (H, W, 3) RGB frames at `fps` into `path` (container from its suffix),
    with `audio` ((channels, n) float32 samples, rate) as an AAC (Opus in .webm) stream."""
    import av

    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec in ("libx264", "libx265"):
            stream.options = {"crf": str(crf)}
        sound = _add_audio(container, path, audio) if audio is not None else None
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        container.mux(stream.encode())
        if sound is not None:
            _write_audio(container, sound, audio)
    return path


def _add_audio(container, path: Path, audio: tuple[np.ndarray, int]):
    samples, rate = audio
    codec = "libopus" if path.suffix.lower() == ".webm" else "aac"
    rate = 48000 if codec == "libopus" else rate
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "stereo" if samples.shape[0] == 2 else "mono"
    return stream


def _write_audio(container, stream, audio: tuple[np.ndarray, int]) -> None:
    import av

    samples, rate = audio
    chunk = 1024
    for start in range(0, samples.shape[1], chunk):
        piece = np.ascontiguousarray(samples[:, start : start + chunk], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(
            piece, format="fltp", layout="stereo" if samples.shape[0] == 2 else "mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def read_video_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of the first video stream of `path`, decoded to uint8 (H, W, 3) RGB."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
