"""What the fixed held-out samples say about colour, and what the weights look like: the
numbers behind TensorBoard's drift curves and histograms. Small pure functions; the
Tracker (distcolor/tracking.py) only writes what they return, on rank 0.

A colourizer that is going wrong usually does so quietly, with its L1 loss still falling:
it drifts to grey (predicting little chroma is a safe bet under L1) or to sepia (one
brownish hue everywhere). Both show early in `chroma_report`:

    colour/ratio_output_to_original   Hasler-Suesstrunk colourfulness of the outputs over
                                      that of the true colours: ~1 is healthy, below ~0.5
                                      is drift to grey
    chroma/hue_spread_predicted       chroma-weighted circular std of the hue angle, per
    chroma/hue_spread_real            image: sepia collapses it while the real one stays
    chroma/mean_{a,b}_{predicted,real}, chroma/mean_magnitude_{predicted,real}
                                      in CIE a*b* units: sepia is b* up with a* flat

`log_monitoring` does it all for one step from the fixed sample batch: one generator
forward (eval mode, no grad), then scalars, chroma histograms and weight histograms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import torch
from torch import nn

from distcolor.color import AB_SCALE, lab_inputs, lab_to_srgb

# The one definition of Hasler-Suesstrunk colourfulness is make_shards' filter (numpy,
# float64, per image): used as is here on the few sample images, so the monitor's numbers
# are on the same scale as --min-colorfulness and the table in distcolor/data/sources.py.
from distcolor.data.sources import colorfulness as _colorfulness_hwc


class ScalarWriter(Protocol):
    """What the monitors write to (distcolor.tracking's Tracker, on rank 0)."""

    enabled: bool

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...
    def log_chroma(self, step: int, predicted_ab: torch.Tensor, real_ab: torch.Tensor) -> None: ...
    def log_histograms(self, step: int, pairs) -> None: ...


HISTOGRAM_BINS = 64
"""Buckets per histogram; TensorBoard re-bins for display anyway."""
MIN_ORIGINAL_COLORFULNESS = 1.0
"""Below this the true colours are gray (Lab -> sRGB leaves ~0.01 on gray) and
colour/ratio_output_to_original is not reported; make_shards keeps images from 10 up."""
MAX_WEIGHT_TAGS = 32
"""Weight histograms per model at most (the paper U-Net has 16 conv layers, PatchGAN 5)."""


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness M of each image: (B, 3, H, W) sRGB, float in [0, 1]
    or uint8 -> (B,) float64 (a single (3, H, W) image -> a 0-d tensor).

    0 for gray; on the paper's scale 15 is slightly, 33 moderately, 59 quite and 82
    highly colourful. Computed on the CPU by `distcolor.data.sources.colorfulness`.
    """
    single = rgb.dim() == 3
    batch = rgb.unsqueeze(0) if single else rgb
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"colourfulness needs (B, 3, H, W) RGB images, got {tuple(rgb.shape)}")
    # M is computed on 0..255 values; floats in [0, 1] are scaled, never rounded.
    scale = 1.0 if batch.dtype == torch.uint8 else 255.0
    hwc = (batch.detach().cpu().double() * scale).permute(0, 2, 3, 1).numpy()
    values = torch.tensor([_colorfulness_hwc(image) for image in hwc], dtype=torch.float64)
    return values[0] if single else values


def hue_spread(ab: torch.Tensor) -> torch.Tensor:
    """Chroma-weighted circular standard deviation of the hue angle, in degrees, per image:
    (B, 2, H, W) chroma -> (B,).

    Each pixel is its (a, b) vector, i.e. a unit hue vector weighted by its chroma, so
    near-gray pixels, whose hue is noise, hardly count. R = |sum of vectors| / sum of
    lengths is 1 when every pixel has the same hue (sepia, any toning) and falls towards
    0 as hues spread; the circular std is sqrt(-2 ln R). An image without chroma gets 0.
    """
    ab = ab.detach().float().flatten(2)  # (B, 2, N)
    resultant = ab.sum(dim=2).norm(dim=1)  # |sum (a, b)|
    total = ab.norm(dim=1).sum(dim=1)  # sum sqrt(a^2 + b^2)
    r = torch.where(total > 0, resultant / total.clamp_min(1e-30), torch.ones_like(total))
    return torch.rad2deg(torch.sqrt(-2.0 * torch.log(r.clamp(1e-6, 1.0))))


def chroma_report(
    lightness: torch.Tensor, predicted_ab: torch.Tensor, real_ab: torch.Tensor
) -> dict[str, float]:
    """Scalars comparing predicted with real chroma of the same images (scaled Lab:
    lightness (B, 1, H, W), chroma (B, 2, H, W); see distcolor/color.py).

    Both are rendered on the same lightness (`lab_to_srgb`), so the colourfulness ratio
    measures the chroma alone; the photo's own sRGB would add the difference between its
    L* and its grayscale's. Chroma means are in CIE a*b* units; hue spreads in degrees,
    averaged over images weighted by each image's total chroma (gray images do not count).
    colour/ratio_output_to_original is left out when the real colours are gray
    (colourfulness below MIN_ORIGINAL_COLORFULNESS: nothing to compare with).
    """
    lightness, predicted_ab, real_ab = (
        t.detach().float().cpu() for t in (lightness, predicted_ab, real_ab)
    )
    out = colorfulness(lab_to_srgb(lightness, predicted_ab)).mean().item()
    orig = colorfulness(lab_to_srgb(lightness, real_ab)).mean().item()
    report = {"colour/output": out, "colour/original": orig}
    if orig >= MIN_ORIGINAL_COLORFULNESS:
        report["colour/ratio_output_to_original"] = out / orig
    for name, ab in (("predicted", predicted_ab), ("real", real_ab)):
        ab = ab * AB_SCALE
        magnitude = ab.norm(dim=1)  # (B, H, W)
        weights = magnitude.flatten(1).sum(dim=1)  # each image's total chroma
        spread = (hue_spread(ab) * weights).sum() / weights.sum().clamp_min(1e-30)
        report[f"chroma/mean_a_{name}"] = ab[:, 0].mean().item()
        report[f"chroma/mean_b_{name}"] = ab[:, 1].mean().item()
        report[f"chroma/mean_magnitude_{name}"] = magnitude.mean().item()
        report[f"chroma/hue_spread_{name}"] = spread.item()
    return report


def chroma_histograms(
    predicted_ab: torch.Tensor, real_ab: torch.Tensor
) -> Iterator[tuple[str, torch.Tensor]]:
    """(tag, values) pairs of a*, b* and chroma magnitude, predicted next to real, in CIE
    a*b* units: chroma/{a,b,magnitude}_{predicted,real}."""
    pairs = {"predicted": predicted_ab.detach().float(), "real": real_ab.detach().float()}
    for channel, index in (("a", 0), ("b", 1)):
        for name, ab in pairs.items():
            yield f"chroma/{channel}_{name}", ab[:, index] * AB_SCALE
    for name, ab in pairs.items():
        yield f"chroma/magnitude_{name}", ab.norm(dim=1) * AB_SCALE


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers (clean parameter names)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def weight_histograms(
    models: Mapping[str, nn.Module], *, max_per_model: int = MAX_WEIGHT_TAGS
) -> Iterator[tuple[str, torch.Tensor]]:
    """(tag, values) pairs for TensorBoard: one `weights/<model>/<parameter>` per conv or
    linear weight (parameters with 2+ dimensions), and the 1-d ones grouped per model into
    `weights/<model>/norm_scales` (1-d weights: norm scales) and `weights/<model>/biases`
    (conv biases and norm shifts). Past `max_per_model` layers, evenly spaced ones are kept
    (first and last included). Values stay where they are (device, no copy until written).
    """
    for model_name, model in models.items():
        layers, scales, biases = [], [], []
        for name, param in _unwrap(model).named_parameters():
            if param.dim() >= 2:
                layers.append((name, param))
            elif name.endswith("weight"):
                scales.append(param.detach().flatten())
            else:
                biases.append(param.detach().flatten())
        if len(layers) > max_per_model:
            step = (len(layers) - 1) / (max_per_model - 1) if max_per_model > 1 else 0
            keep = sorted({round(i * step) for i in range(max_per_model)})
            layers = [layers[i] for i in keep]
        for name, param in layers:
            yield f"weights/{model_name}/{name}", param.detach()
        if scales:
            yield f"weights/{model_name}/norm_scales", torch.cat(scales)
        if biases:
            yield f"weights/{model_name}/biases", torch.cat(biases)


def histogram(values: torch.Tensor, bins: int = HISTOGRAM_BINS) -> dict:
    """A TensorBoard histogram of `values` computed where they are (a 54M-parameter model's
    weights stay on the GPU; only `bins` counts come back): the keyword arguments of
    `SummaryWriter.add_histogram_raw` minus tag and step. Bucket limits are right edges,
    led by an empty bucket at the minimum, as TensorBoard's own histograms are. Non-finite
    values are left out (the checkpoint check reports those)."""
    values = values.detach().flatten()
    if values.numel() == 0:
        raise ValueError("histogram of an empty tensor")
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        values = values.cpu()  # histc has no deterministic CUDA kernel
    values = values.float()
    stats = _stats(values)
    if not all(math.isfinite(v) for v in stats):  # a NaN or inf somewhere: bin the rest
        values = values[torch.isfinite(values)]
        stats = _stats(values) if values.numel() else [0.0, 0.0, 0.0, 0.0]
    lo, hi, total, squares = stats
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(values, bins=bins, min=lo, max=hi) if values.numel() else None
    return {
        "min": stats[0],
        "max": stats[1],
        "num": values.numel(),
        "sum": total,
        "sum_squares": squares,
        "bucket_limits": torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist(),
        "bucket_counts": [0.0, *(counts.cpu().tolist() if counts is not None else [0.0] * bins)],
    }


def _stats(values: torch.Tensor) -> list[float]:
    """min, max, sum, sum of squares, with one copy to the host (float32 sums: these
    only feed TensorBoard's mean and spread read-outs)."""
    lo, hi = torch.aminmax(values)
    return torch.stack([lo, hi, values.sum(), torch.dot(values, values)]).cpu().tolist()


@torch.no_grad()
def predict_chroma(
    generator: nn.Module, batch: dict, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lightness, real chroma, predicted chroma) of a loader batch, from an *unwrapped*
    generator (a DDP forward is a collective) in eval mode; its mode is restored."""
    was_training = generator.training
    generator.eval()
    try:
        lightness, real_ab = lab_inputs(batch, device)
        predicted_ab = generator(lightness).float()
    finally:
        generator.train(was_training)
    return lightness, real_ab, predicted_ab


def log_monitoring(
    tracker: ScalarWriter,
    step: int,
    *,
    sampler: nn.Module,
    batch: dict,
    device: torch.device,
    models: Mapping[str, nn.Module] | None = None,
) -> dict[str, float]:
    """Colour drift scalars, chroma histograms and weight histograms for `step`, from one
    forward of `sampler` (the generator that draws the samples) on the fixed `batch`.
    `models` are the networks whose weights are histogrammed (default {"G": sampler}).
    Does nothing, not even the forward, where the tracker is disabled (ranks other than
    0). Returns the scalars."""
    if not tracker.enabled:
        return {}
    lightness, real_ab, predicted_ab = predict_chroma(sampler, batch, device)
    report = chroma_report(lightness, predicted_ab, real_ab)
    tracker.log_scalars(step, report)
    tracker.log_chroma(step, predicted_ab, real_ab)
    tracker.log_histograms(step, weight_histograms(models or {"G": sampler}))
    return report


__all__ = [
    "HISTOGRAM_BINS",
    "MAX_WEIGHT_TAGS",
    "MIN_ORIGINAL_COLORFULNESS",
    "chroma_histograms",
    "chroma_report",
    "colorfulness",
    "histogram",
    "hue_spread",
    "log_monitoring",
    "predict_chroma",
    "weight_histograms",
]
