"""How much a video's colour flickers, and how far two videos' colours are apart.

Flicker (`FlickerMeter`) is the motion-compensated temporal (warping) error of Lai et al.
2018 ("Learning Blind Video Temporal Consistency"), with the camera's motion for the
optical flow and a lightness test for the occlusion mask. For each pair of consecutive
frames t-1, t, both in CIELAB at their own size (larger frames box-averaged over k x k
blocks to at most MEASURE_SIDE px a side; see `frame_lab`):

1. the camera's motion (a zoom about the centre plus a shift, `infer/motion.py`) is
   estimated from L* alone. A colorization keeps its input's lightness, so the original
   colour video and any colouring of it are measured along the same motion;
2. frame t-1's L*a*b* is warped onto frame t (bilinear);
3. a pixel counts when its warped source lies inside frame t-1 (not revealed by the
   pan or zoom) and its L* differs from the warped L* by less than STABLE_LSTAR: the
   same surface point, neither occluded nor changed (nor blurred by the warp's
   interpolation at a lightness edge);
4. the pair's contribution is the Euclidean |delta (a*, b*)| between frame t and warped
   frame t-1 at those pixels.

Flicker is the mean of that change over all counted pixels of all measured pairs
(pooled pixel by pixel). A scene that only moves under the camera scores near 0; what
remains is the measure's floor: the bilinear warp's error at chroma edges that have no
lightness edge, resampling of the frames themselves and 8-bit rounding (a uniform chroma
over a moving scene scores about 0.06, the original pan/zoom test clip 0.38; at a
reduced 256 px the floors were higher, hence the frame's own size). For a colorization
the rest is its temporal inconsistency. Identical frames score exactly 0 (no motion is
found, nothing warped). The old same-pixel measure (no warp) mostly measured motion:
the original pan/zoom clip scored more than its frame-by-frame colouring.

A pair where under MIN_STABLE_SHARE of the inside pixels pass the lightness test is a
scene cut (or a flash), not flicker, and is left out (`skipped_pairs` counts them): a
cut between two similar landscapes would otherwise add a chance match of unrelated
colours to every colorization alike, stabilised or not.

`mean_ciede2000`: the mean CIEDE2000 between two equally long frame sequences (each
pixel of each frame, at the same reduced size), e.g. a colorized clip against the
original colour clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_lab

from distcolor.evaluate.metrics import ciede2000
from distcolor.infer.motion import estimate_motion, warp

STABLE_LSTAR = 1.0
"""A pixel whose L* differs by less than this from the warped previous frame counts."""
MIN_STABLE_SHARE = 1 / 3
"""A frame pair with fewer counted pixels than this share (of those inside) is a cut."""
MEASURE_SIDE = 640
"""Frames are measured at their own size up to this longest side, above it reduced by
an integer factor (1920 x 1080 by 3, to 640 x 360)."""


def frame_lab(rgb: np.ndarray, side: int = MEASURE_SIDE) -> torch.Tensor:
    """uint8 (H, W, 3) sRGB -> (3, h, w) float32 CIELAB, box-averaged over k x k pixel
    blocks with the smallest integer k that brings the longest side to <= `side` (a
    fractional box filter's footprint shifts from pixel to pixel, which a moving scene
    turns into false flicker; a last partial block is dropped)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a frame must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    unit = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float()[None] / 255
    factor = math.ceil(max(rgb.shape[:2]) / side)
    if factor > 1 and min(rgb.shape[:2]) >= factor:
        unit = F.avg_pool2d(unit, factor)
    return rgb_to_lab(unit)[0]


class FlickerMeter:
    """Feed a video's frames in order (`update`); `value` is its flicker so far (mean
    |delta a*b*| against the motion-warped previous frame over counted pixels, None
    before two frames or when no pixel counted); `stable_fraction` the share of pixels
    that counted (in the measured pairs), `skipped_pairs` the pairs left out as cuts."""

    def __init__(
        self, *, stable_lstar: float = STABLE_LSTAR, side: int = MEASURE_SIDE, pair_every: int = 1
    ) -> None:
        """pair_every: measure only the pairs (t - 1, t) with t a multiple of it, a sample
        of the video at a fraction of the cost (colorize's summary measures every 4th)."""
        self.stable_lstar, self.side, self.pair_every = stable_lstar, side, pair_every
        self._frames = 0
        self._previous: torch.Tensor | None = None
        self._change_sum = 0.0
        self._stable = 0
        self._pixels = 0
        self.skipped_pairs = 0

    def update(self, rgb: np.ndarray, motion: torch.Tensor | None = None) -> torch.Tensor | None:
        """Measure `rgb` against the previous frame; returns the camera motion found, which
        a meter of another rendering of the same frames (the same lightness, e.g. the
        original colour video) may take as `motion` instead of estimating it again."""
        index, self._frames = self._frames, self._frames + 1
        measured = index > 0 and index % self.pair_every == 0
        needed_next = (index + 1) % self.pair_every == 0
        if not measured and not needed_next:
            self._previous = None
            return None
        lab = frame_lab(rgb, self.side)
        previous, self._previous = self._previous, (lab if needed_next else None)
        if not measured or previous is None:
            return None
        if previous.shape != lab.shape:
            raise ValueError(f"frame of {tuple(rgb.shape)} in a video of another size")
        if motion is None:
            motion = estimate_motion(previous[None, :1], lab[None, :1])
        self._measure(lab, previous, motion)
        return motion

    def _measure(self, lab: torch.Tensor, previous: torch.Tensor, motion: torch.Tensor) -> None:
        if bool((motion == 0).all()):  # nothing moved: no interpolation blur either
            warped, inside = previous, torch.ones_like(lab[0], dtype=torch.bool)
        else:
            warped, inside = warp(previous[None], motion)
            warped, inside = warped[0], inside[0, 0] > 0.5
        stable = inside & ((lab[0] - warped[0]).abs() < self.stable_lstar)
        if int(stable.sum()) < MIN_STABLE_SHARE * int(inside.sum()):
            self.skipped_pairs += 1
            return
        change = (lab[1:] - warped[1:]).double().square().sum(dim=0).sqrt()
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
