"""Small real video files for the tests, written with PyAV: every container colorize takes,
with or without audio, odd sizes, gray and 10-bit sources, a variable frame rate, a
rotated phone video (a display matrix in the MP4 track header), and broken files."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import numpy as np

av = __import__("pytest").importorskip("av")

CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4",
          ".webm": "libvpx-vp9"}  # fmt: skip
AUDIO = {".webm": "libopus"}  # WebM holds Opus or Vorbis only


def frame_pixels(i: int, width: int, height: int) -> np.ndarray:
    """A colour frame that drifts slowly: stripes over a gradient, a square moving right."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (xs * 255 // max(width - 1, 1) + 2 * i) % 256
    rgb[..., 1] = 90 + 60 * ((ys // 8) % 2)
    rgb[..., 2] = (ys * 255 // max(height - 1, 1)) % 256
    left = (3 * i) % max(width - 8, 1)
    rgb[height // 3 : height // 3 + 8, left : left + 8] = (250, 240, 40)
    return rgb


def make_video(
    path: Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    fps: int = 25,
    pix_fmt: str = "yuv420p",
    codec: str | None = None,
    audio: int = 0,
    pts: list[int] | None = None,
) -> Path:
    """A video at `path` (container from its suffix) with `audio` tracks of a tone; `pts`
    (in 1/1000 s) for a variable frame rate."""
    width, height = size
    out = av.open(str(path), "w")
    stream = out.add_stream(codec or CODECS[path.suffix], rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if pts is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    tracks = [_mono(out, AUDIO.get(path.suffix, "aac")) for _ in range(int(audio))]
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")
        if pts is not None:
            frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    for sound in tracks:
        _tone(out, sound, seconds=frames / fps)
    out.close()
    return path


def _mono(out, codec: str):
    sound = out.add_stream(codec, rate=48000)
    sound.layout = "mono"
    return sound


def _tone(out, stream, *, seconds: float) -> None:
    rate, block, start = 48000, 960, 0
    while start < seconds * rate:
        t = np.arange(start, start + block) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
        start += block
    for packet in stream.encode(None):
        out.mux(packet)


def rotate_mp4(path: Path) -> Path:
    """Mark an MP4 as shot with the phone upright: the track header's display matrix
    turns the stored frames 90 degrees clockwise, as phones write it."""
    data = bytearray(path.read_bytes())
    header = data.index(b"tkhd") + 4
    assert data[header] == 0  # version 0: the matrix is 40 bytes in
    matrix = header + 40
    data[matrix : matrix + 36] = struct.pack(
        ">9I", 0, 0x00010000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000
    )
    path.write_bytes(bytes(data))
    return path


def audio_only(path: Path) -> Path:
    out = av.open(str(path), "w")
    _tone(out, _mono(out, "aac"), seconds=0.3)
    out.close()
    return path


def video_facts(path: Path) -> dict:
    """What a viewer sees: frames (upright), their timestamps in seconds, size, audio."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames, times = [], []
        for frame in container.decode(video):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(round(float(frame.pts * video.time_base), 4))
        facts = {
            "frames": frames,
            "times": times,
            "size": (frames[0].shape[1], frames[0].shape[0]) if frames else None,
            "audio": audio.codec_context.name if audio is not None else None,
        }
    if audio is not None:
        with av.open(str(path)) as container:
            facts["audio_packets"] = [
                bytes(p) for p in container.demux(container.streams.audio[0]) if p.size
            ]
    return facts


def damaged_video(path: Path, *, frames: int = 12, bad: set[int] = frozenset({6})) -> Path:
    """An MJPEG MKV (every packet a whole picture) whose packets in `bad` are zeroed, as a
    damaged sector or a broken download leaves them."""
    out = av.open(str(path), "w")
    stream = out.add_stream("mjpeg", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
    index = 0
    for i in range(frames + 1):
        frame = None if i == frames else av.VideoFrame.from_ndarray(
            frame_pixels(i, 64, 48), format="rgb24"
        )  # fmt: skip
        for packet in stream.encode(frame):
            if index in bad:
                zeroed = av.Packet(bytes(packet.size))
                zeroed.pts, zeroed.dts, zeroed.time_base = packet.pts, packet.dts, packet.time_base
                zeroed.stream = stream
                packet = zeroed
            out.mux(packet)
            index += 1
    out.close()
    return path


def no_frames(path: Path) -> Path:
    """An MKV that declares a video stream but holds only audio packets."""
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.codec_context.open()
    _tone(out, _mono(out, "aac"), seconds=0.3)
    out.close()
    return path


def size_change_video(path: Path) -> Path:
    """An MKV whose MPEG-2 stream switches from 64 x 48 to 96 x 64 half-way (two
    recordings joined end to end, as a camera or a splice leaves them)."""
    import io

    def elementary(size: tuple[int, int], start: int) -> bytes:
        buffer = io.BytesIO()
        out = av.open(buffer, "w", format="mpeg2video")
        stream = out.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for i in range(start, start + 6):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, *size), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        out.close()
        return buffer.getvalue()

    joined = path.with_suffix(".m2v")
    joined.write_bytes(elementary((64, 48), 0) + elementary((96, 64), 6))
    with av.open(str(joined)) as source, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for index, packet in enumerate(source.demux(source.streams.video[0])):
            if packet.size:
                packet.pts = packet.dts = index
                packet.stream = stream
                out.mux(packet)
    return path
