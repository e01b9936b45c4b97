"""Colour a video: decode, colour frames in batches, stabilise, encode, audio copied.

A reader thread demuxes the input and decodes its frames (PyAV, whose wheels carry
FFmpeg); the calling thread colours them in batches exactly as colorize colours a photo
(PIL's grayscale of the decoded frame, the network on a square copy, its chroma
upsampled and joined to the frame's full-resolution lightness), with the chroma
stabilised over time (`stabilize.ChromaStabilizer`) between the network and the
composition; a writer thread encodes the frames and muxes the original audio packets,
untouched, in their order. Each output frame keeps its input frame's timestamp, so the
frame count, the frame rate (variable ones too) and the duration are the input's.

The output goes to a hidden name beside the final one and is renamed into place only
once complete: an interrupted or failed video leaves nothing under the final name. A
file that is not a video, or has no video stream, is `Unreadable` (skipped and counted);
a stream that breaks off after some frames (a truncated download) is coloured up to
where it breaks, with a note. Rotated phone videos are turned upright (the display
matrix applied to the pixels, as EXIF is for photos); odd frame sizes are encoded as
4:4:4, which needs no even sides.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from distcolor.color import grayscale
from distcolor.errors import UserError
from distcolor.infer.colorizer import (
    Colorizer,
    cached_colorizer,
    check_saturation,
    default_device,
)
from distcolor.infer.flicker import FlickerMeter
from distcolor.infer.photos import Unreadable, open_regular
from distcolor.infer.stabilize import DEFAULT_STRENGTH, ChromaStabilizer
from distcolor.infer.video_writer import VideoWriter, reason

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
"""What a folder walk picks up as video; the output keeps the input's container."""

FLICKER_PAIR_EVERY = 4
"""The summary's flicker samples every 4th pair of frames: measuring all of them would
take longer than colouring them."""
QUEUE_FRAMES = 32
"""Decoded and coloured frames in flight between the threads (bounded memory)."""


def require_av():
    """The `av` module, or a one-line UserError naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise UserError("colouring videos needs PyAV: pip install 'distcolor[video]'") from None
    return av


@dataclass
class VideoReport:
    """What became of one video (the colorize summary lists one per video)."""

    source: str
    output: str
    frames: int = 0
    width: int = 0
    height: int = 0
    fps: float | None = None
    duration_s: float | None = None
    codec: str = ""
    audio: str | None = None  # the copied audio streams' codecs (comma-separated), if any
    rotation: int = 0  # degrees turned to bring the frames upright
    cuts: int = 0  # scene cuts the stabiliser reset at
    flicker: float | None = None  # of the coloured frames (see flicker.FlickerMeter)
    flicker_original: float | None = None  # of the input's own colour, when it has any
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Frame:
    pts: int
    gray: Image.Image
    rgb: np.ndarray | None  # the input's colour (for flicker_original), None when gray


def partial_path(target: Path) -> Path:
    """The hidden name a video is written under until it is complete (same container)."""
    return target.with_name(f".{target.stem}.partial{target.suffix}")


def transcode(
    colorizer: Colorizer,
    source: Path,
    target: Path,
    *,
    stabilize: float,
    batch_size: int = 8,
    advance: Callable[[int], None] = lambda n: None,
    on_total: Callable[[int | None], None] = lambda n: None,
) -> VideoReport:
    """Colour the video `source` into `target` (same container). Unreadable when the input
    is not a video PyAV can read; OSError when the output cannot be written."""
    av = require_av()
    stabilizer = ChromaStabilizer(stabilize)  # a bad strength is refused before any work
    _check_target(source, target, batch_size)
    report = VideoReport(source=str(source), output=str(target))
    tmp = partial_path(target)
    try:
        with open_regular(source) as file:
            container = _open_input(av, file)
            with container:
                video, audio = _streams(container, report)
                on_total(video.frames or None)
                target.parent.mkdir(parents=True, exist_ok=True)
                _transcode(
                    av, colorizer, container, video, audio, tmp, report,
                    stabilizer=stabilizer, batch_size=batch_size, advance=advance,
                )  # fmt: skip
        if report.frames == 0:
            raise Unreadable("no frame could be decoded")
        os.replace(tmp, target)
        return report
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _check_target(source: Path, target: Path, batch_size: int) -> None:
    """One-line UserErrors for what the caller asked of the output (the API's callers
    pass anything; the command line has checked most of it already)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch-size: {batch_size!r} must be an integer of at least 1")
    if target.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(
            f"{target}: a video output needs one of the suffixes "
            f"{', '.join(sorted(VIDEO_SUFFIXES))} (its container)"
        )
    if target.exists() and Path(source).exists() and target.samefile(source):
        raise UserError(f"{target} is the input itself: write the colour video elsewhere")


def colorize_video(
    video: str | Path,
    out: str | Path,
    checkpoint: str | Path,
    *,
    stabilize: float = DEFAULT_STRENGTH,
    weights: str = "ema",
    render_size: int | None = None,
    saturation: float = 1.0,
    device: str | None = None,
    batch_size: int = 8,
) -> VideoReport:
    """Colour the video file `video` into `out` (same container) with the generator in
    `checkpoint`, as `colorize()` colours a photo; the loaded generator is kept for the
    next call. Unreadable for a file that is not a video; see `transcode`."""
    check_saturation(saturation)
    chosen = str(device or default_device())
    colorizer = cached_colorizer(str(Path(checkpoint).resolve()), weights, render_size, chosen)
    colorizer.saturation = saturation
    return transcode(colorizer, Path(video), Path(out), stabilize=stabilize, batch_size=batch_size)


def _open_input(av, file):
    try:
        return av.open(file, "r")
    except av.FFmpegError as err:
        raise Unreadable(f"not a video FFmpeg can read ({reason(err)})") from None


def _streams(container, report: VideoReport):
    video = next((s for s in container.streams.video), None)
    if video is None:
        raise Unreadable("no video stream")
    video.thread_type = "AUTO"  # frame and slice threads in the decoder
    audio = list(container.streams.audio)  # every audio track, copied
    others = [s.type for s in container.streams if s.type not in ("video", "audio")]
    if len(container.streams.video) > 1 or others:
        dropped = ", ".join([*["video"] * (len(container.streams.video) - 1), *others])
        report.notes.append(f"streams not copied: {dropped} (only the first video is coloured)")
    return video, audio


def _transcode(
    av, colorizer, container, video, audio, tmp: Path, report: VideoReport,
    *, stabilizer: ChromaStabilizer, batch_size: int, advance,
) -> None:  # fmt: skip
    flicker = _FlickerPair()
    decoded: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()
    reader = threading.Thread(
        target=_read, args=(container, video, audio, decoded, stop, report), daemon=True
    )
    reader.start()
    writer, early = None, []
    try:
        for batch, packets in _batches(decoded, batch_size):
            if writer is None and not batch:  # audio before any frame (or no frame at all)
                early.extend(packets)
                continue
            if writer is None:
                size = batch[0].gray.size
                writer = VideoWriter(av, tmp, video, audio, size, report, on_frame=flicker)
                packets = early + packets
            for packet in packets:
                writer.put(packet)
            if not batch:
                continue
            grays = [frame.gray for frame in batch]
            lightness = colorizer.network_inputs(grays)
            chroma = stabilizer(lightness, colorizer.chroma_of(lightness))
            for frame, ab in zip(batch, chroma, strict=True):
                writer.put((frame.pts, colorizer.compose(frame.gray, ab[None]), frame.rgb))
                report.frames += 1
            advance(len(batch))
        if writer is not None:
            writer.close()
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                decoded.get_nowait()  # let a blocked reader see `stop`
        reader.join()
        if writer is not None:
            writer.abort()
    report.cuts = stabilizer.cuts
    report.flicker, report.flicker_original = flicker.coloured.value, flicker.original.value


class _FlickerPair:
    """The flicker of the coloured frames and of the input's own colour, measured along
    one camera-motion estimate (both have the same lightness); runs on the writer thread,
    beside the network."""

    def __init__(self) -> None:
        self.coloured = FlickerMeter(pair_every=FLICKER_PAIR_EVERY)
        self.original = FlickerMeter(pair_every=FLICKER_PAIR_EVERY)

    def __call__(self, rgb: np.ndarray, original: np.ndarray | None) -> None:
        motion = self.coloured.update(rgb)
        if original is not None:
            self.original.update(original, motion=motion)


def _batches(decoded: queue.Queue, batch_size: int) -> Iterator[tuple[list[_Frame], list]]:
    """(frames, audio packets that came before the last of them), `batch_size` frames at a
    time; the reader's error, if any, is raised here."""
    frames: list[_Frame] = []
    packets: list = []
    while True:
        item = decoded.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, _Frame):
            frames.append(item)
            if len(frames) == batch_size:
                yield frames, packets
                frames, packets = [], []
        else:
            packets.append(item)
    if frames or packets:
        yield frames, packets


def _read(container, video, audio, out: queue.Queue, stop: threading.Event, report) -> None:
    """Reader thread: frames (upright, gray + colour) and audio packets, in stream order,
    then None. A damaged packet is skipped (and counted); a stream that cannot be read on
    ends the video there, with a note."""

    def put(item) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                out.put(item, timeout=0.1)
                return True
        return False

    clock = _Clock(container, video)
    frames, damaged, problem, size = 0, 0, None, None
    try:
        for packet in container.demux([video, *audio]):
            if packet.stream.type == "audio":
                if packet.dts is not None and not put(packet):
                    return
                continue
            try:
                decoded = packet.decode()
            except Exception as err:  # noqa: BLE001 - a damaged packet: the input's problem
                damaged, problem = damaged + 1, reason(err)
                continue
            for frame in decoded:
                item = _upright(frame, clock.pts(frame), report)
                if size is None:
                    size = item.gray.size
                elif item.gray.size != size:  # the output stream has one size
                    item = _scaled(item, size)
                    if _RESIZED not in report.notes:
                        report.notes.append(_RESIZED)
                if not put(item):
                    return
                frames += 1
    except Exception as err:  # noqa: BLE001 - the demuxer's error: the file ends here
        if frames:
            report.notes.append(f"the stream breaks off after {frames} frames ({reason(err)})")
        problem = problem or reason(err)
    if damaged:
        report.notes.append(f"{damaged} damaged packet(s) skipped ({problem})")
    if frames == 0 and problem:
        put(Unreadable(f"cannot decode a frame ({problem})"))
        return
    put(None)


_RESIZED = "the frame size changes mid-stream: later frames are scaled to the first's size"


def _scaled(frame: _Frame, size: tuple[int, int]) -> _Frame:
    gray = frame.gray.resize(size, Image.Resampling.BICUBIC)
    rgb = frame.rgb
    if rgb is not None:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
    return _Frame(frame.pts, gray, rgb)


class _Clock:
    """Output timestamps: the input's, made strictly rising (encoders need that); in AVI,
    which stores decoding order only, the frame's place in the sequence."""

    def __init__(self, container, video) -> None:
        self.last: int | None = None
        self.step = None
        if container.format.name == "avi" and video.average_rate and video.time_base:
            self.step = 1 / (video.average_rate * video.time_base)
        self.frames = 0

    def pts(self, frame) -> int:
        if self.step is not None:
            pts = round(self.frames * self.step)
        else:
            pts = frame.pts if frame.pts is not None else (self.last or 0) + 1
        self.frames += 1
        if self.last is not None and pts <= self.last:
            pts = self.last + 1
        self.last = pts
        return pts


def _upright(frame, pts: int, report: VideoReport) -> _Frame:
    rgb_image = frame.to_image()  # RGB24 whatever the source's pixel format (10-bit, gray)
    turn = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if turn:
        rgb_image = rgb_image.rotate(turn, expand=True)  # counter-clockwise, as stored
        report.rotation = turn
    gray = grayscale(rgb_image)
    colour = frame.format.name not in ("gray", "gray10le", "gray12le", "gray16le", "gray8")
    return _Frame(pts, gray, np.asarray(rgb_image) if colour else None)
