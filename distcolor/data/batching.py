"""From JPEG bytes to batches: decoding, training and evaluation views, batch buffers.

Runs on the loader workers. Batches hold uint8 pixels; the conversion to Lab happens on
the training device (`color.lab_inputs`), batched, and moves 4x less data through the
worker queue than float32 would.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterable, Iterator

import torch
from PIL import Image
from torch.utils.data import get_worker_info

from distcolor.color import grayscale

JITTER = 1.125  # train crops come from images resized to 1.125x the crop (pix2pix: 286 -> 256)
SLACK = 1.15  # train crops of images up to 1.15x the jittered size skip the resize


def decode(data: bytes | None, min_side: int = 0) -> Image.Image | None:
    """RGB image from JPEG bytes, or None if unreadable.

    With `min_side`, a JPEG much larger than needed is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling, PIL's draft mode) keeping the shorter side >= min_side."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min_side and image.format == "JPEG" and min(image.size) >= 2 * min_side:
                scale = min_side / min(image.size)
                image.draft(
                    "RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale))
                )
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _resize_shorter(image: Image.Image, side: int) -> Image.Image:
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def train_view(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Random crop of `size` from the image with its shorter side at about JITTER * size,
    flipped half the time. An image already near that size (make_shards stores 286 px for
    256 crops; draft decoding lands within 2x) is cropped as it is, shorter side up to
    SLACK x the target: a resize costs as much as decoding, and is what packing is for."""
    target = round(size * JITTER)
    if not size <= min(image.size) <= round(target * SLACK):
        image = _resize_shorter(image, target)
    x = rng.randint(0, image.width - size)
    y = rng.randint(0, image.height - size)
    image = image.crop((x, y, x + size, y + size))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_view(image: Image.Image, size: int) -> Image.Image:
    """Deterministic centre crop of `size` from the image resized to `size` on its shorter side."""
    if min(image.size) != size:
        image = _resize_shorter(image, size)
    x, y = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((x, y, x + size, y + size))


class BatchBuffers:
    """Where a loader worker puts its batches' pixels: shared memory, reused when it can.

    Sending a batch to the training process needs its tensors in shared memory, and a
    fresh 4 MB segment per batch (16 crops at 256 px) costs about 3 ms in allocation and
    page faults, a fifth of the time decoding those crops takes. So each batch comes
    with a one-element shared `release` flag; a consumer that is done with a batch sets
    it (`recycle_batches` does, when the next batch is drawn) and the worker fills that
    buffer again. Buffers never released are never overwritten: past `keep` of them the
    worker just allocates new ones. In the main process (no workers) plain memory is used.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.shared = get_worker_info() is not None
        self.slots: list[tuple[torch.Tensor, torch.Tensor, BufferRelease]] = []

    def get(self, count: int, height: int, width: int) -> tuple:
        """(rgb (count, H, W, 3) uint8, gray (count, 1, H, W) uint8, release flag or None,
        index of the reused buffer or None)."""
        if not self.shared:
            rgb = torch.empty((count, height, width, 3), dtype=torch.uint8)
            return rgb, torch.empty((count, 1, height, width), dtype=torch.uint8), None, None
        for index, (rgb, gray, release) in enumerate(self.slots):
            if rgb.shape == (count, height, width, 3) and release.flag.item() == 1:
                release.flag.zero_()
                return rgb, gray, release, index
        slot = (
            torch.empty((count, height, width, 3), dtype=torch.uint8).share_memory_(),
            torch.empty((count, 1, height, width), dtype=torch.uint8).share_memory_(),
            BufferRelease(torch.zeros(1, dtype=torch.int32).share_memory_()),
        )
        if len(self.slots) >= self.keep:
            return *slot, None
        self.slots.append(slot)
        return *slot, len(self.slots) - 1


class BufferRelease:
    """Hands a batch's buffer back to the worker that filled it. Not a tensor, nor a
    container of one, so the DataLoader's pin_memory step passes it through as it is
    (a pinned *copy* of the flag would release nothing); its flag still travels through
    the worker queue in shared memory."""

    def __init__(self, flag: torch.Tensor) -> None:
        self.flag = flag

    def __call__(self) -> None:
        self.flag.fill_(1)


def recycle_batches(batches: Iterable[dict]) -> Iterator[dict]:
    """Yield `batches`, handing each one's buffers back to its worker when the next one is
    drawn: a batch is valid until then (the trainer converts it on arrival). Only for a
    consumer that keeps no batch; anything else iterates the loader itself."""
    for batch in batches:
        yield batch
        if batch.get("release") is not None:
            batch["release"]()


def make_batch(
    images: list[Image.Image],
    keys: list[str],
    sources: list[str],
    skipped: int,
    buffers: BatchBuffers | None = None,
) -> dict:
    """PIL crops -> {'gray': uint8 (B,1,H,W), 'rgb': uint8 (B,3,H,W), 'keys', 'sources',
    'skipped', 'release', 'buffer'}. Lab conversion happens on the training device
    (`color.lab_inputs`): a batched GPU op there, and 4x less data through the worker
    queue than float32 here.

    `rgb` is a channels-last view (NHWC in memory): each crop is copied once, into the
    batch, instead of again by a channel permute. `skipped` counts the samples dropped as
    unreadable since the previous batch."""
    width, height = images[0].size
    rgb, gray, release, buffer = (buffers or BatchBuffers(0)).get(len(images), height, width)
    rgb_array, gray_array = rgb.numpy(), gray.numpy()
    for i, image in enumerate(images):
        rgb_array[i] = image
        gray_array[i, 0] = grayscale(image)  # the one grayscale: color.grayscale
    return {
        "gray": gray,
        "rgb": rgb.permute(0, 3, 1, 2),
        "keys": keys,
        "sources": sources,
        "skipped": skipped,
        "release": release,
        "buffer": buffer,
    }
