"""The held-out report: the model against two baselines, overall and per source.

Every method colours the same test crops from the same lightness (`color.lab_inputs`, the
training path), and every output goes through what `colorize` does to a user's photo
(chroma fitted into sRGB, `color.fit_chroma`) before it is scored against the original:

    model           the generator's chroma
    baseline_gray   no colour: chroma 0 (the gray input itself)
    baseline_mean   the training set's mean chroma, the same at every pixel

Sums are kept per (method, source) in one float64 tensor, so one all-reduce combines every
rank's share exactly; means and histogram divergences are taken from the sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from kornia.color import rgb_to_lab
from torch import nn

from distcolor.color import AB_SCALE, fitted_srgb, lab_inputs, uint8_to_unit
from distcolor.evaluate.metrics import (
    AB_BINS,
    AUC_MAX,
    ab_error_histogram,
    ab_histogram,
    auc,
    ciede2000,
    js_divergence,
    psnr,
    ssim,
)
from distcolor.monitor import colorfulness

METHODS = ("model", "baseline_gray", "baseline_mean")
# Per-image means summed over images, then the histograms (counts).
SCALARS = ("images", "psnr", "ssim", "ciede2000", "colorfulness", "colorfulness_original", "l1")
HIST = AB_BINS * AB_BINS
ERRORS = AUC_MAX + 2
WIDTH = len(SCALARS) + 2 * HIST + ERRORS

Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def mean_chroma(batches: Iterable[dict], device: torch.device, reduce: Reduce | None = None):
    """Mean scaled chroma (2,) over every pixel of `batches` (training images), summed over
    ranks by `reduce`: the constant colour of the `baseline_mean` method."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in batches:
        _, chroma = lab_inputs(batch, device)
        totals[:2] += chroma.double().sum(dim=(0, 2, 3))
        totals[2] += chroma.shape[0] * chroma.shape[2] * chroma.shape[3]
    if reduce is not None:
        totals = reduce(totals)
    return (totals[:2] / totals[2].clamp(min=1)).float()


class ReportSums:
    """(methods, sources, WIDTH) float64 sums: per-image metric sums, then the output's and
    the original's ab histograms, then the ab-error histogram (for the AuC)."""

    def __init__(self, sources: list[str], device: torch.device) -> None:
        self.sources = list(sources)
        self.index = {name: i for i, name in enumerate(self.sources)}
        shape = (len(METHODS), len(self.sources), WIDTH)
        self.sums = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(
        self,
        method: str,
        sources: list[str],
        *,
        chroma: torch.Tensor,
        lightness: torch.Tensor,
        true_chroma: torch.Tensor,
        true_rgb: torch.Tensor,
        true_lab: torch.Tensor,
        true_colorfulness: torch.Tensor,
    ) -> None:
        """Score one method's chroma (B, 2, H, W) for a batch against its originals."""
        output = fitted_srgb(lightness, chroma)  # (B, 3, H, W) in [0, 1], what a user sees
        lab = rgb_to_lab(output)
        per_image = torch.stack(
            [
                torch.ones(output.shape[0], dtype=torch.float64, device=output.device),
                psnr(output, true_rgb).double(),
                ssim(output, true_rgb).double(),
                ciede2000(lab, true_lab).double().mean(dim=(-2, -1)),
                colorfulness(output).to(output.device),
                true_colorfulness,
                (chroma.float() - true_chroma).abs().double().mean(dim=(1, 2, 3)),
            ],
            dim=1,
        )  # (B, len(SCALARS))
        m = METHODS.index(method)
        rows = torch.tensor([self.index[s] for s in sources], device=output.device)
        self.sums[m, :, : len(SCALARS)].index_add_(0, rows, per_image)
        start = len(SCALARS)
        for source in sorted(set(sources)):  # histograms per source: counts, summed
            pick = torch.tensor([i for i, s in enumerate(sources) if s == source])
            ab, true_ab = lab[pick, 1:], true_lab[pick, 1:]
            target = self.sums[m, self.index[source]]
            target[start : start + HIST] += ab_histogram(ab).flatten()
            target[start + HIST : start + 2 * HIST] += ab_histogram(true_ab).flatten()
            target[start + 2 * HIST :] += ab_error_histogram(ab, true_ab)

    def reduce(self, reduce: Reduce | None) -> None:
        if reduce is not None:
            self.sums = reduce(self.sums)

    def report(self) -> dict:
        """{method: metrics overall + `per_source`: {source: metrics}} from the sums."""
        out = {}
        for m, method in enumerate(METHODS):
            overall = _metrics(self.sums[m].sum(dim=0))
            overall["per_source"] = {
                source: _metrics(self.sums[m, i])
                for i, source in enumerate(self.sources)
                if self.sums[m, i, 0] > 0
            }
            out[method] = overall
        return out


def _metrics(row: torch.Tensor) -> dict:
    images = int(row[0].item())
    if images == 0:
        return {"images": 0}
    means = {name: row[i].item() / images for i, name in enumerate(SCALARS) if i > 0}
    start = len(SCALARS)
    hist_out, hist_true = row[start : start + HIST], row[start + HIST : start + 2 * HIST]
    errors = row[start + 2 * HIST :]
    original = means["colorfulness_original"]
    return {
        "images": images,
        "psnr": means["psnr"],
        "ssim": means["ssim"],
        "ciede2000": means["ciede2000"],
        "colorfulness": means["colorfulness"],
        "colorfulness_original": original,
        "colorfulness_ratio": means["colorfulness"] / original if original > 0 else None,
        "ab_hist_js": js_divergence(hist_out, hist_true),
        "auc": auc(errors),
        "l1": means["l1"],
    }


@torch.no_grad()
def evaluate(
    generator: nn.Module,
    batches: Iterable[dict],
    *,
    sources: list[str],
    mean_ab: torch.Tensor,
    device: torch.device,
    reduce: Reduce | None = None,
) -> dict:
    """The report over `batches` (loader batches of held-out crops) for the generator and
    the two baselines; every rank passes its share and the same `sources` list."""
    was_training = generator.training
    generator.eval()
    sums = ReportSums(sources, device)
    mean_ab = mean_ab.to(device).view(1, 2, 1, 1)
    for batch in batches:
        lightness, true_chroma = lab_inputs(batch, device)
        true_rgb = uint8_to_unit(batch["rgb"].to(device))
        true_lab = rgb_to_lab(true_rgb)
        common = dict(  # the originals' side, the same for every method: computed once
            lightness=lightness,
            true_chroma=true_chroma,
            true_rgb=true_rgb,
            true_lab=true_lab,
            true_colorfulness=colorfulness(true_rgb).to(device),
        )
        chroma = {
            "model": generator(lightness).float(),
            "baseline_gray": torch.zeros_like(true_chroma),
            "baseline_mean": mean_ab.expand_as(true_chroma),
        }
        for method in METHODS:
            sums.add(method, batch["sources"], chroma=chroma[method], **common)
    generator.train(was_training)
    sums.reduce(reduce)
    return sums.report()


def scalars(report: dict, prefix: str = "eval") -> dict[str, float]:
    """TensorBoard scalars of a report: eval/<method>/<metric>, overall only."""
    out = {}
    for method in METHODS:
        for name, value in report[method].items():
            if isinstance(value, float):
                out[f"{prefix}/{method}/{name}"] = value
    return out


def mean_ab_in_lab(mean_ab: torch.Tensor) -> list[float]:
    """The scaled mean chroma in a*, b* units, for the report."""
    return [round(v * AB_SCALE, 3) for v in mean_ab.tolist()]


class HeldOut:
    """The evaluation a run repeats: the first `images` test crops at `image_size` (a
    fixed set, split over ranks) and the mean chroma of the first `mean_images` training
    crops, computed once. Every rank calls it together (the sums are all-reduced)."""

    def __init__(
        self,
        test_shards: list,
        train_shards: list,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int,
        rank: int,
        world: int,
        images: int | None,
        mean_images: int,
        device: torch.device,
        reduce: Reduce | None = None,
    ) -> None:
        from distcolor.data.loader import build_eval_loader

        self.sources = sorted({shard.source for shard in test_shards})
        self.device, self.reduce = device, reduce
        self.image_size, self.images = image_size, images

        def loader(shards: list, limit: int | None):
            return build_eval_loader(
                shards,
                image_size=image_size,
                batch_size=batch_size,
                num_workers=num_workers,
                rank=rank,
                world_size=world,
                limit=limit,
            )

        self.test_loader = loader(test_shards, images)
        self.mean_ab = mean_chroma(loader(train_shards, mean_images), device, reduce)
        self.mean_images = mean_images

    def __call__(self, generator: nn.Module) -> dict:
        report = evaluate(
            generator,
            self.test_loader,
            sources=self.sources,
            mean_ab=self.mean_ab,
            device=self.device,
            reduce=self.reduce,
        )
        report["protocol"] = protocol(
            self.image_size, report["model"]["images"], self.mean_ab, self.mean_images
        )
        return report


def protocol(image_size: int, images: int, mean_ab: torch.Tensor, mean_images: int) -> dict:
    """What the numbers were measured on: colorization scores move with all of it."""
    return {
        "images": images,
        "resolution": image_size,
        "crop": f"shorter side resized to {image_size} px (bicubic), centre {image_size}x"
        f"{image_size} crop",
        "input": "PIL grayscale of the crop as L* (CIE Lab, D65)",
        "colour_space": "sRGB (D65); outputs = input L* + predicted a*b* fitted into sRGB; "
        "PSNR and SSIM on RGB in [0, 1], CIEDE2000, ab histograms and AuC in CIE Lab",
        "order": "the first N samples of the test shards in manifest order",
        "baseline_mean_ab": mean_ab_in_lab(mean_ab.cpu()),
        "baseline_mean_images": mean_images,
    }
