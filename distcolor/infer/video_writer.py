"""The encoding half of video colorize: a writer thread that encodes coloured frames with
the input's timestamps and muxes the input's audio packets unchanged, into the container
the output's name asks for."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

QUEUE_ITEMS = 32
"""Coloured frames and audio packets waiting for the encoder (bounded memory)."""


def encoder_settings(suffix: str, width: int, height: int) -> tuple[str, str, dict]:
    """(codec, pixel format, options) for the output container: H.264 at a visually
    lossless quality, 4:4:4 where a side is odd (4:2:0 needs even sides); VP9 in WebM;
    MPEG-4 Part 2 at its finest quantiser in AVI, which stores no presentation times
    (H.264 there comes back a frame late)."""
    odd = width % 2 or height % 2
    pix_fmt = "yuv444p" if odd else "yuv420p"
    if suffix == ".webm":
        options = {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        return "libvpx-vp9", pix_fmt, options
    if suffix == ".avi":
        return "mpeg4", "yuv420p", {"flags": "+qscale", "global_quality": str(2 * 118)}
    return "libx264", pix_fmt, {"crf": "17", "preset": "veryfast"}


class VideoWriter:
    """Writer thread: encodes coloured frames and muxes the input's audio packets."""

    def __init__(
        self, av, path: Path, video, audio, size: tuple[int, int], report, *,
        on_frame: Callable = lambda rgb, original: None,
    ) -> None:  # fmt: skip
        """on_frame(rgb, original rgb or None): called on this thread for each frame written."""
        self.on_frame = on_frame
        self.av, self.report = av, report
        width, height = size
        codec, pix_fmt, options = encoder_settings(path.suffix.lower(), width, height)
        self.output = av.open(str(path), "w")
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        self.stream = self.output.add_stream(codec, rate=rate, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.stream.codec_context.time_base = video.time_base  # the input's timestamps
        self.stream.time_base = video.time_base
        self.time_base = video.time_base
        # each input audio track -> its copy, by stream index
        self.audio = {a.index: self.output.add_stream_from_template(a) for a in audio}
        if audio:
            report.audio = ",".join(a.codec_context.name for a in audio)
        report.width, report.height, report.codec = width, height, codec
        report.fps = float(rate)
        self.first_pts = self.last_pts = None
        self.items: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, item) -> None:
        while self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.items.put(item, timeout=0.1)
                return
        self._raise()

    def close(self) -> None:
        self.put(None)
        self.thread.join()
        self._raise()
        if self.first_pts is not None:  # the last frame shown for one frame interval
            span = float((self.last_pts - self.first_pts) * self.time_base)
            self.report.duration_s = span + 1.0 / self.report.fps

    def abort(self) -> None:
        """After an error elsewhere: stop the thread, close the file (then removed)."""
        if self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.items.put_nowait(False)
            self.thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.output.close()

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, OSError):
                raise err
            raise OSError(f"cannot encode the video ({reason(err)})") from None

    def _run(self) -> None:
        try:
            while True:
                item = self.items.get()
                if item is False:
                    return
                if item is None:
                    for packet in self.stream.encode(None):  # flush the encoder
                        self.output.mux(packet)
                    self.output.close()
                    return
                self._write(item)
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            self.error = err

    def _write(self, item) -> None:
        if isinstance(item, tuple):
            pts, rgb, original = item
            frame = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, self.time_base
            if self.first_pts is None:
                self.first_pts = pts
            self.last_pts = pts
            for packet in self.stream.encode(frame):
                self.output.mux(packet)
            self.on_frame(rgb, original)
        else:
            item.stream = self.audio[item.stream.index]  # copied as it is: no re-encoding
            self.output.mux(item)


def reason(err: BaseException) -> str:
    """FFmpeg's own words (its errors also quote the file descriptor: dropped)."""
    text = (getattr(err, "strerror", None) or str(err)).strip().splitlines()
    return text[0] if text else type(err).__name__
