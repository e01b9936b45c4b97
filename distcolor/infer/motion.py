"""Global camera motion between two frames' lightness: a zoom about the centre plus a shift.

The video stabiliser (`infer/stabilize.py`) carries the previous frame's chroma along the
camera's motion before blending it with the new prediction, so that a pan or a zoom does
not smear colour across edges. The motion is the 3-parameter warp

    previous(x) ~ current((x - shift) / zoom)   i.e. the current pixel at x was at
    zoom * x + shift in the previous frame (coordinates normalised to [-1, 1]),

found by Lucas-Kanade (Gauss-Newton on the lightness difference) coarse to fine over an
image pyramid, with the mean of both images' gradients (efficient second-order
minimisation, Benhimane & Malis 2004) so a few iterations converge. It runs at 128 px
at most: a few ms per frame on a CPU, and it falls back to no motion when the
estimate does not explain the frames better than no motion does.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

MOTION_SIDE = 128
"""The motion is estimated on a copy of the lightness at most this many pixels a side."""
PYRAMID_MIN_SIDE = 16
ITERATIONS = 8
MAX_ZOOM_CHANGE = 0.25
"""Per-frame |zoom - 1| and |shift| (normalised units) above this are not camera motion."""
MAX_SHIFT = 0.5


@functools.lru_cache(maxsize=16)
def base_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(1, H, W, 2) normalised (x, y) pixel centres, grid_sample's align_corners=False."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) * 2 + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)[None]


def warp(image: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`image` (1, C, H, W) of the previous frame moved onto the current one by `motion`
    (zoom - 1, shift x, shift y), and the (1, 1, H, W) mask of pixels whose source lies
    inside the previous frame (the rest are new: revealed by a pan or a zoom out)."""
    grid = sampling_grid(motion, *image.shape[-2:], image.device)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1)[:, None].to(image.dtype)
    return warped, inside


def sampling_grid(motion: torch.Tensor, height: int, width: int, device) -> torch.Tensor:
    zoom, shift = 1 + motion[0], motion[1:].to(device)
    return base_grid(height, width, device) * zoom.to(device) + shift


def estimate_motion(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """(zoom - 1, shift x, shift y) float32 on the CPU taking `previous` (1, 1, H, W)
    lightness onto `current`; zeros when no such motion explains them better."""
    previous, current = _motion_copy(previous), _motion_copy(current)
    pyramid = [(previous, current)]
    while min(pyramid[-1][0].shape[-2:]) >= 2 * PYRAMID_MIN_SIDE:
        pyramid.append(tuple(F.avg_pool2d(image, 2) for image in pyramid[-1]))
    motion = torch.zeros(3, dtype=torch.float64)
    for prev_level, cur_level in reversed(pyramid):
        for _ in range(ITERATIONS):
            step = _gauss_newton_step(prev_level, cur_level, motion)
            if step is None:
                break
            motion = motion + step
            if step.abs().max() < 1e-4:
                break
    motion = motion.float()
    if not _plausible(motion) or _error(previous, current, motion) >= _error(
        previous, current, torch.zeros(3)
    ):
        return torch.zeros(3)
    return motion


def _motion_copy(lightness: torch.Tensor) -> torch.Tensor:
    """Lightness at <= MOTION_SIDE px a side, lightly blurred (bilinear differences need
    smooth images to be linear over a pixel), float32."""
    image = lightness.float()
    side = max(image.shape[-2:])
    if side > MOTION_SIDE:
        image = F.interpolate(image, scale_factor=MOTION_SIDE / side, mode="area")
    return F.avg_pool2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _gauss_newton_step(previous, current, motion: torch.Tensor) -> torch.Tensor | None:
    """One ESM step: the change of `motion` minimising the squared lightness difference
    over the pixels whose source is inside the previous frame, or None if degenerate."""
    height, width = current.shape[-2:]
    warped, inside = warp(previous, motion.float())
    (warped_x, warped_y), (current_x, current_y) = _gradients(warped), _gradients(current)
    grad_x, grad_y = warped_x + current_x, warped_y + current_y
    # Pixel differences -> per unit of normalised coordinate (the image spans 2 units);
    # halved for the mean of the two images' gradients.
    grad_x, grad_y = grad_x * (width / 4), grad_y * (height / 4)
    grid = base_grid(height, width, current.device).permute(0, 3, 1, 2)
    radial = grad_x * grid[:, :1] + grad_y * grid[:, 1:]
    jacobian = torch.cat([radial, grad_x, grad_y], dim=1).flatten(2)[0].double()  # (3, N)
    weight = inside.flatten().double()
    residual = (warped - current).flatten().double() * weight
    hessian = (jacobian * weight) @ jacobian.T
    scale = hessian.diagonal()
    if weight.sum() < 0.25 * weight.numel() or bool((scale <= 1e-12).any()):
        return None  # mostly outside, or a flat image: no motion to see
    # A touch of Levenberg-Marquardt damping keeps a nearly singular system (a frame of
    # horizontal stripes says nothing about horizontal shifts) from wild steps.
    step = -torch.linalg.solve(hessian + 1e-3 * torch.diag(scale), jacobian @ residual)
    return step if bool(torch.isfinite(step).all()) else None


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (pixel units), replicated at the borders."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    grad_x = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    grad_y = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return grad_x, grad_y


def _plausible(motion: torch.Tensor) -> bool:
    return (
        bool(torch.isfinite(motion).all())
        and abs(float(motion[0])) <= MAX_ZOOM_CHANGE
        and float(motion[1:].abs().max()) <= MAX_SHIFT
    )


def _error(previous, current, motion: torch.Tensor) -> float:
    """Mean |difference| over the pixels both frames show."""
    warped, inside = warp(previous, motion)
    return float(((warped - current).abs() * inside).sum() / inside.sum().clamp_min(1))
