"""Small pure functions for judging colourizations, each on any device (the report that
sums them over ranks and methods is `evaluation.py`):

    psnr, ssim               fidelity of the rendered sRGB image to the photo, per image
    ciede2000                perceptual colour difference, per pixel, in CIE Lab
    ab_histogram,            how the predicted a*b* distribution matches the real one
      js_divergence          (the drift to grey or sepia that L1 hides)
    ab_error_histogram, auc  Zhang et al. 2016's raw accuracy (AuC) of the chroma

The histograms are counts, so each rank's can be summed before the final number.
"""

from __future__ import annotations

import math

import kornia.metrics
import torch

PSNR_CAP = 100.0
"""PSNR of an identical pair (MSE 0) is +inf; it is reported as this many dB instead, so a
mean over images stays finite. Any MSE below 1e-10 reads as the cap."""
SSIM_WINDOW = 11
"""Wang et al. 2004's Gaussian window: 11 taps, sigma 1.5 (kornia's fixed sigma)."""
AB_RANGE = 110.0
"""ab_histogram covers [-AB_RANGE, AB_RANGE]^2 in a*b* units (sRGB lies within it)."""
AB_BINS = 22
"""Cells per axis of ab_histogram: 10-unit cells, Zhang et al. 2016's ab grid size."""
AUC_MAX = 150
"""Largest ab error threshold of the raw-accuracy curve, in a*b* units (Zhang et al. 2016)."""


def _check_pair(name: str, output: torch.Tensor, target: torch.Tensor) -> None:
    """Both (B, C, H, W) floating point images of the same shape, or a ValueError."""
    if output.shape != target.shape or output.dim() != 4:
        raise ValueError(
            f"{name} needs two (B, C, H, W) images of one shape, "
            f"got {tuple(output.shape)} and {tuple(target.shape)}"
        )
    if not (output.is_floating_point() and target.is_floating_point()):
        raise ValueError(f"{name} needs float images in [0, 1], got {output.dtype}, {target.dtype}")


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB: (B, 3, H, W) sRGB in [0, 1] -> (B,)
    float64.

    10 log10(1 / MSE_i), the MSE over all channels and pixels of image i, in float64 (a
    float32 MSE of near-identical images loses digits). Capped at PSNR_CAP, which is what
    an identical pair (+inf) gets. Average the per-image values, not the MSEs, to match
    the usual per-image-mean reporting.
    """
    _check_pair("psnr", output, target)
    mse = (output.double() - target.double()).square().flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse)).clamp(max=PSNR_CAP)


def ssim(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean structural similarity of each image: (B, 3, H, W) sRGB in [0, 1] -> (B,) float64.

    Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
    computed by `kornia.metrics.ssim` over the valid positions only (like the reference
    MATLAB code and scikit-image: no padded borders), then averaged over channels and
    positions. Float64, because the local variances E[x^2] - E[x]^2 cancel badly in float32;
    kornia's eps is 0 so an identical pair gives 1. Sides under 11 px raise ValueError.
    """
    _check_pair("ssim", output, target)
    height, width = output.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px (its Gaussian "
            f"window), got {height}x{width}"
        )
    index = kornia.metrics.ssim(
        output.double(), target.double(), SSIM_WINDOW, max_val=1.0, eps=0.0, padding="valid"
    )
    return index.flatten(1).mean(dim=1)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference, per pixel: (B, 3, ...) CIE Lab, unscaled (L* in [0, 100],
    a*, b* in Lab units), channel dim 1 -> (B, ...) float64; (B, 3, H, W) -> (B, H, W).

    Sharma, Wu & Dalal 2005, kL = kC = kH = 1, in float64, with their edge cases: the hue
    of a*' = b* = 0 is 0 (also for -0.0, where atan2 gives 180); when C1' C2' = 0, dh' = 0
    and the mean hue is h1' + h2'; otherwise the mean hue goes the short way round the
    circle (|h1' - h2'| > 180 adds or takes 360). A metric, not a loss: its gradient is
    not defined at gray colours.
    """
    if lab1.shape != lab2.shape or lab1.dim() < 2 or lab1.shape[1] != 3:
        raise ValueError(
            f"ciede2000 needs two (B, 3, ...) Lab tensors of one shape, "
            f"got {tuple(lab1.shape)} and {tuple(lab2.shape)}"
        )
    l1, a1, b1 = lab1.double().unbind(dim=1)
    l2, a2, b2 = lab2.double().unbind(dim=1)
    pow25_7 = 25.0**7

    # a* rescaled by G so that near-neutral colours get more hue weight (Sharma eqs. 2-7)
    c_bar7 = ((a1.hypot(b1) + a2.hypot(b2)) / 2.0).pow(7)
    g = 0.5 * (1.0 - torch.sqrt(c_bar7 / (c_bar7 + pow25_7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = a1p.hypot(b1), a2p.hypot(b2)
    h1p = torch.where(c1p == 0, 0.0, torch.rad2deg(torch.atan2(b1, a1p)).remainder(360.0))
    h2p = torch.where(c2p == 0, 0.0, torch.rad2deg(torch.atan2(b2, a2p)).remainder(360.0))

    # differences (eqs. 8-11)
    chromatic = c1p * c2p != 0
    dh = h2p - h1p
    dh = torch.where(dh > 180.0, dh - 360.0, torch.where(dh < -180.0, dh + 360.0, dh))
    dh = torch.where(chromatic, dh, 0.0)
    d_l = l2 - l1
    d_c = c2p - c1p
    d_h = 2.0 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh) / 2.0)

    # means and weights (eqs. 12-22)
    l_bar = (l1 + l2) / 2.0
    c_bar = (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() <= 180.0,
        h_sum / 2.0,
        torch.where(h_sum < 360.0, (h_sum + 360.0) / 2.0, (h_sum - 360.0) / 2.0),
    )
    h_bar = torch.where(chromatic, h_bar, h_sum)
    t = (
        1.0
        - 0.17 * torch.cos(torch.deg2rad(h_bar - 30.0))
        + 0.24 * torch.cos(torch.deg2rad(2.0 * h_bar))
        + 0.32 * torch.cos(torch.deg2rad(3.0 * h_bar + 6.0))
        - 0.20 * torch.cos(torch.deg2rad(4.0 * h_bar - 63.0))
    )
    d_theta = 30.0 * torch.exp(-(((h_bar - 275.0) / 25.0) ** 2))
    c_bar_7 = c_bar.pow(7)
    r_c = 2.0 * torch.sqrt(c_bar_7 / (c_bar_7 + pow25_7))
    l_off = (l_bar - 50.0) ** 2
    s_l = 1.0 + 0.015 * l_off / torch.sqrt(20.0 + l_off)
    s_c = 1.0 + 0.045 * c_bar
    s_h = 1.0 + 0.015 * c_bar * t
    r_t = -torch.sin(torch.deg2rad(2.0 * d_theta)) * r_c

    dl, dc, dh_ = d_l / s_l, d_c / s_c, d_h / s_h
    return torch.sqrt((dl**2 + dc**2 + dh_**2 + r_t * dc * dh_).clamp_min(0.0))


def ab_histogram(ab: torch.Tensor, *, bins: int = AB_BINS) -> torch.Tensor:
    """2-D histogram of a*, b* over every pixel of a batch: (B, 2, H, W) in Lab units
    (unscaled: multiply the model's chroma by AB_SCALE) -> (bins, bins) float64 counts,
    rows a*, columns b*.

    The square [-AB_RANGE, AB_RANGE]^2 in `bins` equal cells per axis (10 a*b* units at
    the default, Zhang et al. 2016's quantisation); values outside land in the edge cells.
    Counts, so ranks' histograms sum; bincount keeps it deterministic on the GPU too.
    NaN values raise ValueError (they have no cell).
    """
    if ab.dim() != 4 or ab.shape[1] != 2:
        raise ValueError(f"ab_histogram needs (B, 2, H, W) chroma, got {tuple(ab.shape)}")
    if torch.isnan(ab).any():
        raise ValueError("ab_histogram got NaN chroma values")
    width = 2.0 * AB_RANGE / bins
    cells = torch.floor((ab.double() + AB_RANGE) / width).clamp(0, bins - 1).long()
    flat = (cells[:, 0] * bins + cells[:, 1]).flatten()
    return torch.bincount(flat, minlength=bins * bins).double().view(bins, bins)


def js_divergence(p_counts: torch.Tensor, q_counts: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1], between two histograms of counts of one
    shape (e.g. two `ab_histogram`s), each normalised to a distribution here.

    JS(P, Q) = KL(P || M) / 2 + KL(Q || M) / 2 with M = (P + Q) / 2 and 0 log 0 = 0. Unlike
    KL it stays finite when a cell is empty in one histogram only (predictions missing a
    hue), is symmetric and bounded: 0 for the same distribution, 1 for disjoint ones.
    A histogram with zero total raises ValueError.
    """
    if p_counts.shape != q_counts.shape:
        raise ValueError(
            f"js_divergence needs histograms of one shape, "
            f"got {tuple(p_counts.shape)} and {tuple(q_counts.shape)}"
        )
    p, q = p_counts.double().flatten(), q_counts.double().flatten()
    if (p < 0).any() or (q < 0).any():
        raise ValueError("js_divergence needs non-negative counts")
    p_total, q_total = p.sum(), q.sum()
    if p_total.item() <= 0 or q_total.item() <= 0:
        raise ValueError("js_divergence of a histogram with no counts")
    p, q = p / p_total, q / q_total
    m = (p + q) / 2.0
    # x log x - x log m, with xlogy's 0 log 0 = 0; where p > 0, m > 0 too
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum()
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum()
    bits = ((kl_pm + kl_qm) / (2.0 * math.log(2.0))).item()
    return min(max(bits, 0.0), 1.0)


def ab_error_histogram(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean ab error counted in unit bins: two (B, 2, H, W) chroma in Lab
    units (unscaled: multiply by AB_SCALE) -> (AUC_MAX + 2,) float64 counts, for `auc`.

    Bin k = ceil(error), clamped to AUC_MAX + 1: bin 0 holds errors of exactly 0, bin k
    errors in (k - 1, k], the last bin everything over AUC_MAX (NaN predictions included:
    they count as wrong). Counts, so summing ranks' (or batches') histograms and then
    calling `auc` gives exactly the AuC of all pixels together.
    """
    if pred_ab.shape != true_ab.shape or pred_ab.dim() != 4 or pred_ab.shape[1] != 2:
        raise ValueError(
            f"ab_error_histogram needs two (B, 2, H, W) chroma of one shape, "
            f"got {tuple(pred_ab.shape)} and {tuple(true_ab.shape)}"
        )
    error = (pred_ab.double() - true_ab.double()).norm(dim=1)
    error = torch.nan_to_num(error, nan=math.inf)
    bins = torch.ceil(error).clamp(max=AUC_MAX + 1).long().flatten()
    return torch.bincount(bins, minlength=AUC_MAX + 2).double()


def auc(error_counts: torch.Tensor) -> float:
    """Zhang et al. 2016's raw accuracy (AuC) in [0, 1] from `ab_error_histogram` counts
    (AUC_MAX + 2,): the area under the fraction of pixels whose ab error is within t,
    swept over t = 0..AUC_MAX, normalised.

    acc(t) = cumsum(counts)[t] / total for integer t (= fraction of pixels with error <= t),
    AuC = (acc(0) / 2 + acc(1) + ... + acc(AUC_MAX - 1) + acc(AUC_MAX) / 2) / AUC_MAX,
    the trapezoid rule on unit steps. 1 for a perfect prediction, 0 if every error > AUC_MAX.
    """
    if error_counts.shape != (AUC_MAX + 2,):
        raise ValueError(
            f"auc needs ({AUC_MAX + 2},) error counts, got {tuple(error_counts.shape)}"
        )
    counts = error_counts.double()
    total = counts.sum()
    if total.item() <= 0:
        raise ValueError("auc of an empty error histogram")
    acc = counts.cumsum(dim=0)[: AUC_MAX + 1] / total
    area = acc.sum() - (acc[0] + acc[-1]) / 2.0
    return (area / AUC_MAX).item()
