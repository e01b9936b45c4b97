"""How much a video's colour flickers, and how far two videos' colours are apart.

Flicker (`FlickerMeter`): the mean Euclidean change of (a*, b*) (CIELAB units) between
consecutive frames, over the pixels whose L* changed by less than STABLE_LSTAR. Where
the lightness barely changed the scene barely changed, so its chroma should not change
either: in a colorized video that change is flicker. The same number for the original
colour video is the floor (a pan moves iso-luminant colour edges, so even a perfect
colorization has some). Pairs are pooled pixel by pixel over the whole video. Frames are
measured at MEASURE_SIDE px on the longest side (box-filtered).

A pair of frames where under MIN_STABLE_SHARE of the pixels kept their L* is a scene
cut (or a flash), not flicker, and is left out (`skipped_pairs` counts them): across a
cut between two similar landscapes a quarter of the pixels still pass the lightness test
by chance, with a real a*b* change of about 8 units, which would otherwise add to the
flicker of every colorization alike, stabilised or not.

`mean_ciede2000`: the mean CIEDE2000 between two equally long frame sequences (each
pixel of each frame, at the same reduced size), e.g. a colorized clip against the
original colour clip.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from kornia.color import rgb_to_lab
from PIL import Image

from distcolor.evaluate.metrics import ciede2000

STABLE_LSTAR = 1.0
"""A pixel whose L* changed by less than this between two frames counts for flicker."""
MIN_STABLE_SHARE = 1 / 3
"""A frame pair with fewer stable pixels than this share is a cut, not measured."""
MEASURE_SIDE = 256
"""Frames are measured at this longest side (or their own size when smaller)."""


def frame_lab(rgb: np.ndarray, side: int = MEASURE_SIDE) -> torch.Tensor:
    """uint8 (H, W, 3) sRGB -> (3, h, w) float32 CIELAB at longest side <= `side`."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a frame must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if max(height, width) > side:
        scale = side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    unit = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    return rgb_to_lab(unit[None])[0]


class FlickerMeter:
    """Feed a video's frames in order (`update`); `value` is its flicker so far (mean
    |delta a*b*| over stable pixels, None before two frames or when no pixel was stable);
    `stable_fraction` the share of pixels that counted (in the measured pairs),
    `skipped_pairs` the pairs left out as cuts."""

    def __init__(self, *, stable_lstar: float = STABLE_LSTAR, side: int = MEASURE_SIDE) -> None:
        self.stable_lstar, self.side = stable_lstar, side
        self._previous: torch.Tensor | None = None
        self._change_sum = 0.0
        self._stable = 0
        self._pixels = 0
        self.skipped_pairs = 0

    def update(self, rgb: np.ndarray) -> None:
        lab = frame_lab(rgb, self.side)
        previous, self._previous = self._previous, lab
        if previous is None:
            return
        if previous.shape != lab.shape:
            raise ValueError(f"frame of {tuple(rgb.shape)} in a video of another size")
        stable = (lab[0] - previous[0]).abs() < self.stable_lstar
        if float(stable.float().mean()) < MIN_STABLE_SHARE:
            self.skipped_pairs += 1
            return
        change = (lab[1:] - previous[1:]).double().square().sum(dim=0).sqrt()
        self._change_sum += float(change[stable].sum())
        self._stable += int(stable.sum())
        self._pixels += stable.numel()

    @property
    def value(self) -> float | None:
        return self._change_sum / self._stable if self._stable else None

    @property
    def stable_fraction(self) -> float | None:
        return self._stable / self._pixels if self._pixels else None


def flicker(frames: Iterable[np.ndarray]) -> float | None:
    """The flicker of a whole sequence of uint8 (H, W, 3) frames."""
    meter = FlickerMeter()
    for frame in frames:
        meter.update(frame)
    return meter.value


def mean_ciede2000(
    frames: Iterable[np.ndarray], references: Iterable[np.ndarray], *, side: int = MEASURE_SIDE
) -> float:
    """Mean CIEDE2000 of `frames` against `references` (uint8 (H, W, 3), pairwise, in
    order; both sequences equally long), over all pixels at longest side <= `side`."""
    total, count = 0.0, 0
    for frame, reference in zip(frames, references, strict=True):
        if frame.shape != reference.shape:
            raise ValueError(f"frame {frame.shape} and reference {reference.shape} differ")
        distance = ciede2000(frame_lab(frame, side)[None], frame_lab(reference, side)[None])
        total += float(distance.sum())
        count += distance.numel()
    if not count:
        raise ValueError("mean_ciede2000 needs at least one frame")
    return total / count
