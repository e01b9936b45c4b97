"""Temporal stability for video: chroma smoothed over time, following real changes.

A colorizer run frame by frame flickers: the network's chroma for nearly the same input
jumps between frames (DeOldify users report it; DDColor's do for image sequences). The
`ChromaStabilizer` sits between `Colorizer.predict` and `Colorizer.compose` and, frame by
frame at the render size, blends the new prediction with the previous output:

    out_t = pred_t + S * gate * (carried_{t-1} - pred_t)

- carried_{t-1}: the previous output, at the same pixel; with `motion=True`, moved along
  the camera's motion first (a zoom about the centre plus a shift, `infer/motion.py`;
  pixels a pan reveals have no past and take the prediction). On by default: without it
  a pan drags the past colour across the scene and the stabilised pan/zoom clip
  flickers nearly as much as frame by frame (0.567 vs 0.666 at S = 0.98);
- gate in [0, 1], per pixel: exp(-(dL / GATE_LSTAR)^2) of the lightness change dL (L*,
  after the motion, 3x3-averaged) — where something moved or changed the colour
  follows the prediction at once, where nothing did the past is kept;
- S, the strength in [0, 1): an exponential average with memory 1 / (1 - S) frames
  where nothing changes; 0 returns the prediction unchanged (frame by frame). A long
  memory is safe where the gate, not S, decides where the colour must follow; its
  cost is that a scene's first prediction lingers (its weight is S^n after n frames: a
  bias-corrected start, a running mean over the first frames, was tried and raised the
  cuts clip's flicker from 0.175 to 0.235, its 30-frame shots being mostly start);
- a scene cut (mean |dL| over 8x8-pixel blocks above CUT_LSTAR, after the motion)
  starts afresh: the first frame of a scene is its own prediction, nothing blended in.

Tuned on benchmarks/flicker_study.py's clips with the warping-error flicker of
`infer/flicker.py` (docs/colorize.md has the numbers): S = 0.98 and GATE_LSTAR = 10 cut
flicker 5.4x (pan/zoom) and 3.2x (cuts) against frame by frame, CIEDE2000 to the
original within +0.3%, for a 200-step default model at render size 64 (S = 0.97: 4.8x
/ 3.0x). S = 0.9 gave only 2.8x / 2.2x, and 2.4x / 2.1x with GATE_LSTAR = 3, which let
the warp's own interpolation error at edges (several L* at render size) reopen the
gate where nothing changed. A real change (a lamp, a moving object: tens of L*) still
closes it at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distcolor.color import L_SCALE
from distcolor.errors import UserError
from distcolor.infer.motion import estimate_motion, warp

DEFAULT_STRENGTH = 0.98
"""Default --stabilize: remembers about 50 frames (2 s at 25 fps) where nothing changes."""
GATE_LSTAR = 10.0
"""Lightness change (L*) at which a pixel keeps exp(-1) = 37% of its blending weight."""
CUT_LSTAR = 4.0
"""Mean block lightness change (L*) above which two frames are different scenes."""
CUT_BLOCK = 8


class ChromaStabilizer:
    """Smooths a video's chroma over time; one instance per video, fed its frames in order.

    strength: S in [0, 1) (0 = frame by frame); motion: follow the camera's zoom and shift
    (off: blend each pixel with the same pixel of the previous frame). `cuts` counts the
    scene cuts seen so far, `frames` the frames.
    """

    def __init__(
        self,
        strength: float = DEFAULT_STRENGTH,
        *,
        motion: bool = True,
        gate_lstar: float = GATE_LSTAR,
        cut_lstar: float = CUT_LSTAR,
    ) -> None:
        if not isinstance(strength, int | float) or not 0 <= strength < 1:
            raise UserError(
                f"--stabilize: {strength!r} must be a number in [0, 1) "
                f"(0 colours frame by frame; {DEFAULT_STRENGTH:g} is the default)"
            )
        self.strength, self.motion = float(strength), motion
        self.gate_lstar, self.cut_lstar = gate_lstar, cut_lstar
        self.cuts = self.frames = 0
        self._lightness: torch.Tensor | None = None  # previous frame's, (1, 1, R, R)
        self._chroma: torch.Tensor | None = None  # previous output, (1, 2, R, R)

    @torch.no_grad()
    def __call__(self, lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        """lightness (B, 1, R, R), the network input of B consecutive frames (scaled L*),
        and chroma (B, 2, R, R), its output -> the stabilised chroma (B, 2, R, R)."""
        if lightness.dim() != 4 or lightness.shape[1] != 1 or chroma.dim() != 4:
            raise ValueError(f"lightness {tuple(lightness.shape)} is not (B, 1, R, R)")
        if chroma.shape[1] != 2 or chroma.shape[0] != lightness.shape[0]:
            raise ValueError(
                f"chroma {tuple(chroma.shape)} does not match lightness {tuple(lightness.shape)}"
            )
        if chroma.shape[-2:] != lightness.shape[-2:]:
            raise ValueError(f"chroma {tuple(chroma.shape)} and lightness differ in size")
        lightness = lightness.to(chroma.device, torch.float32)
        if self.strength == 0:  # frame by frame: the prediction itself, cuts still counted
            for index in range(len(chroma)):
                self._step_frame_by_frame(lightness[index : index + 1])
            return chroma
        stable = torch.empty_like(chroma)
        for index in range(len(chroma)):
            stable[index] = self._step(lightness[index : index + 1], chroma[index : index + 1])[0]
        return stable

    def _step(self, lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        carried = self._carried(lightness)
        if carried is None:
            out = chroma.float()
        else:
            previous_lightness, previous_chroma, inside = carried
            change = (lightness - previous_lightness).abs() * L_SCALE
            change = F.avg_pool2d(F.pad(change, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            weight = self.strength * torch.exp(-((change / self.gate_lstar) ** 2)) * inside
            out = chroma.float() + weight * (previous_chroma - chroma.float())

        self._lightness, self._chroma = lightness, out
        return out.to(chroma.dtype)

    def _step_frame_by_frame(self, lightness: torch.Tensor) -> None:
        self._carried(lightness, chroma_too=False)
        self._lightness = lightness

    def _carried(self, lightness: torch.Tensor, *, chroma_too: bool = True):
        """(previous lightness, previous output chroma, mask of pixels with a past), moved
        onto this frame, or None at the first frame and at a scene cut (counted)."""
        self.frames += 1
        if self._lightness is None or self._lightness.shape != lightness.shape:
            return None
        motion = torch.zeros(3)
        if self.motion:
            motion = estimate_motion(self._lightness, lightness)
        previous, inside = warp(self._lightness, motion.to(lightness.device))
        if self._is_cut(previous, lightness, inside):
            self.cuts += 1
            return None
        if not chroma_too:
            return None
        previous_chroma, _ = warp(self._chroma, motion.to(lightness.device))
        return previous, previous_chroma, inside

    def _is_cut(self, previous: torch.Tensor, lightness: torch.Tensor, inside) -> bool:
        """Block means differ by more than CUT_LSTAR on average over the blocks that both
        frames show: a new scene, not a moving one (motion is taken out first)."""
        block = max(1, min(CUT_BLOCK, math.gcd(*lightness.shape[-2:])))
        seen = F.avg_pool2d(inside, block) > 0.99
        change = F.avg_pool2d(lightness - previous, block).abs() * L_SCALE
        if not bool(seen.any()):
            return True
        return float(change[seen].mean()) > self.cut_lstar
