"""Streaming loader: shards -> (lightness, chroma) batches, decoded on the worker processes.

Every rank reads its own shards (split here, not by `accelerator.prepare`, whose
`dispatch_batches` would make rank 0 read everything) and every worker its own
part of those. The training stream is infinite (epochs follow each other), so all
ranks run the same number of steps, and deterministic given (seed, rank, worker
count), so a resumed run can fast-forward to the exact batch it stopped at:

- epoch e reshuffles the shard list with seed (seed, e); rank r takes every
  world-th shard, worker w every num_workers-th shard of those;
- a shuffle buffer seeded with (seed, e, rank, w) mixes samples across shards;
- crops and flips are seeded per sample with (seed, e, key);
- the DataLoader takes batches from its workers round-robin, so global batch i is
  batch i // num_workers of worker i % num_workers.

Each batch says which (logical) worker made it and how far into its epoch's shuffled
raw stream that worker is; `LoaderState` collects this, checkpoints carry it, and a
resumed stream skips exactly that many raw samples per worker without decoding them.
A sample that fails to decode is skipped, counted in the batch's `skipped` field and
warned about; it never stops training (a worker finding nothing decodable in a whole
epoch reports it, and the trainer stops with one line).
"""

from __future__ import annotations

import functools
import io
import itertools
import multiprocessing
import random
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distcolor.color import gray_to_lightness, rgb_to_chroma, uint8_to_unit
from distcolor.errors import UserError

Shards = list[tuple[str, int]]
JITTER = 1.125  # train crops come from images resized to 1.125x the crop (pix2pix: 286 -> 256)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _decode(sample: dict) -> Image.Image | None:
    data = sample.get("jpg")
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _resize_shorter(image: Image.Image, side: int) -> Image.Image:
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def train_view(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Random crop of `size` from the image resized to JITTER * size, flipped half the time."""
    image = _resize_shorter(image, round(size * JITTER))
    x = rng.randint(0, image.width - size)
    y = rng.randint(0, image.height - size)
    image = image.crop((x, y, x + size, y + size))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_view(image: Image.Image, size: int) -> Image.Image:
    """Deterministic centre crop of `size` from the image resized to `size` on its shorter side."""
    image = _resize_shorter(image, size)
    x, y = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((x, y, x + size, y + size))


def make_batch(images: list[Image.Image], keys: list[str], skipped: int) -> dict:
    """PIL crops -> {'L': (B,1,H,W), 'ab': (B,2,H,W), 'rgb': uint8 (B,3,H,W), 'keys', 'skipped'}.

    `skipped` counts the samples dropped as unreadable since the previous batch."""
    rgb = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    # The model's input is PIL's grayscale, i.e. what a black-and-white photo of the scene holds.
    gray = torch.from_numpy(np.stack([np.asarray(im.convert("L")) for im in images]))[:, None]
    return {
        "L": gray_to_lightness(uint8_to_unit(gray)),
        "ab": rgb_to_chroma(uint8_to_unit(rgb)),
        "rgb": rgb.contiguous(),
        "keys": keys,
        "skipped": skipped,
    }


class _SkipCounter:
    """Webdataset error handler that warns, counts and carries on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, err: Exception) -> bool:
        self.count += 1
        warnings.warn(f"skipping unreadable shard data: {err!r}", stacklevel=2)
        return True


def _samples(shards: list[str], counter: _SkipCounter) -> Iterator[dict]:
    return iter(wds.tarfile_samples([{"url": s} for s in shards], handler=counter))


def _batches(
    samples: Iterator[dict],
    counter: _SkipCounter,
    view: Callable[[Image.Image, dict], Image.Image],
    batch_size: int,
    *,
    keep_partial: bool,
) -> Iterator[tuple[dict, int]]:
    """Decode, crop (`view`) and batch raw samples; yields (batch, raw samples read so far).

    Unreadable samples are counted and warned about; each batch's `skipped` says how many
    were met since the previous batch."""
    images: list[Image.Image] = []
    keys: list[str] = []
    reported = counter.count  # errors met before this stream (e.g. while skipping) are old
    read = 0
    for read, sample in enumerate(samples, start=1):
        image = _decode(sample)
        if image is None:
            key, url = sample.get("__key__"), sample.get("__url__")
            counter(ValueError(f"undecodable image in sample {key!r} of {url}"))
            continue
        images.append(view(image, sample))
        keys.append(sample["__key__"])
        if len(images) == batch_size:
            yield make_batch(images, keys, counter.count - reported), read
            reported, images, keys = counter.count, [], []
    if keep_partial and images:
        yield make_batch(images, keys, counter.count - reported), read


class LoaderState:
    """Where one rank's training stream stands, for exact resume.

    For each logical worker: (epoch, raw samples it has pulled from that epoch's shuffled
    stream, unreadable ones included). Resuming skips those raw samples without decoding
    them, so a restart costs a read of the shard bytes, not a re-decode, and stays exact
    when some samples are corrupt. `batches` (batches consumed so far) fixes which worker
    the resumed DataLoader's first batch must come from; a worker with no batch yet starts
    at `first_epoch`. `skipped` counts the unreadable samples this rank has met.
    """

    def __init__(self, num_workers: int, first_epoch: int = 0) -> None:
        self.num_workers = max(num_workers, 1)
        self.first_epoch = first_epoch
        self.batches = 0
        self.skipped = 0
        self.positions: dict[int, tuple[int, int]] = {}

    def update(self, batch: dict) -> None:
        """Record a consumed batch; a worker's fatal report becomes a one-line UserError."""
        if "fatal" in batch:
            raise UserError(batch["fatal"])
        self.positions[batch["worker"]] = (batch["epoch"], batch["consumed"])
        self.batches += 1
        self.skipped += batch["skipped"]

    def position(self, worker: int) -> tuple[int, int]:
        """(epoch, raw samples already read) where logical `worker` goes on."""
        return self.positions.get(worker, (self.first_epoch, 0))

    def state_dict(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "first_epoch": self.first_epoch,
            "batches": self.batches,
            "skipped": self.skipped,
            "positions": {str(w): list(p) for w, p in sorted(self.positions.items())},
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_workers = int(state["num_workers"])
        self.first_epoch = int(state["first_epoch"])
        self.batches = int(state["batches"])
        self.skipped = int(state["skipped"])
        self.positions = {int(w): (int(e), int(c)) for w, (e, c) in state["positions"].items()}

    def next_epoch(self) -> int:
        """The first epoch no worker has started: where a stream with a new split begins."""
        return max([self.first_epoch] + [e + 1 for e, _ in self.positions.values()])


class TrainStream(IterableDataset):
    """Infinite, resumable stream of training batches for one rank.

    Worker w plays logical worker (w + state.batches) % num_workers: the DataLoader always
    asks worker 0 first, while the uninterrupted run's next batch was due from that one.
    """

    def __init__(
        self,
        shards: Shards,
        *,
        image_size: int,
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        rank: int,
        world_size: int,
        state: dict | None = None,
    ) -> None:
        self.shards, self.image_size, self.batch_size = shards, image_size, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.state = state

    def epoch_shards(self, epoch: int, worker: int, num_workers: int) -> Shards:
        order = list(self.shards)
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order[self.rank :: self.world_size][worker::num_workers]

    def _epoch_batches(
        self, shards: Shards, epoch: int, worker: int, start: int = 0
    ) -> Iterator[dict]:
        """Batches of one epoch for logical `worker`, after its first `start` raw samples."""
        counter = _SkipCounter()
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}")
        stream = _samples([path for path, _ in shards], counter)
        stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)
        for _ in itertools.islice(stream, start):  # read before the resume point: not decoded
            pass

        def view(image: Image.Image, sample: dict) -> Image.Image:
            key_rng = random.Random(f"{self.seed}:{epoch}:{sample['__key__']}")
            return train_view(image, self.image_size, key_rng)

        for batch, read in _batches(stream, counter, view, self.batch_size, keep_partial=False):
            batch.update(worker=worker, epoch=epoch, consumed=start + read)
            yield batch
        # The partial batch at an epoch's end is dropped: every batch has batch_size images.

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        state = LoaderState(num_workers)
        if self.state is not None:
            state.load_state_dict(self.state)
        logical = (worker + state.batches) % num_workers
        epoch, start = state.position(logical)
        while True:
            produced = 0
            for batch in self._epoch_batches(
                self.epoch_shards(epoch, logical, num_workers), epoch, logical, start
            ):
                produced += 1
                yield batch
            if produced == 0 and start == 0:
                yield {
                    "fatal": f"data.shards: loader worker {logical} of rank {self.rank} "
                    f"found no {self.batch_size} decodable images in a whole epoch"
                }
                return
            epoch, start = epoch + 1, 0


class EvalStream(IterableDataset):
    """One deterministic pass over the first `limit` samples of a split, centre-cropped.

    Sample i goes to reader slot i % (world_size * num_workers), so ranks and their
    workers see disjoint samples and together see each of the first `limit` once.
    """

    def __init__(
        self,
        shards: Shards,
        *,
        image_size: int,
        batch_size: int,
        rank: int,
        world_size: int,
        limit: int | None = None,
    ) -> None:
        self.shards, self.image_size, self.batch_size = shards, image_size, batch_size
        self.rank, self.world_size, self.limit = rank, world_size, limit

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        slots = self.world_size * num_workers
        slot = self.rank * num_workers + worker
        counter = _SkipCounter()
        samples = itertools.islice(_samples([path for path, _ in self.shards], counter), self.limit)
        mine = (sample for i, sample in enumerate(samples) if i % slots == slot)
        for batch, _ in _batches(
            mine,
            counter,
            lambda image, _: eval_view(image, self.image_size),
            self.batch_size,
            keep_partial=True,
        ):
            yield batch


def check_train_split(
    shards: Shards, *, batch_size: int, world_size: int, num_workers: int
) -> None:
    """UserError naming the setting when the shards cannot feed every rank and worker."""
    readers = world_size * max(num_workers, 1)
    if len(shards) < readers:
        raise UserError(
            f"data.num_workers: {len(shards)} train shards cannot feed {world_size} rank(s) x "
            f"{max(num_workers, 1)} worker(s); lower data.num_workers or write smaller shards"
        )
    # Worst case: a reader gets the fewest shards, and the smallest ones.
    fewest = len(shards) // readers
    smallest = sum(sorted(count for _, count in shards)[:fewest])
    if smallest < batch_size:
        raise UserError(
            f"data.batch_size: {batch_size} is more than the {smallest} samples one loader "
            f"worker may get per epoch; lower data.batch_size or data.num_workers"
        )


def build_train_loader(
    shards: Shards,
    *,
    image_size: int,
    batch_size: int,
    num_workers: int,
    shuffle_buffer: int,
    seed: int,
    rank: int,
    world_size: int,
    state: dict | None = None,
) -> DataLoader:
    """Loader of endless training batches; `state` (a LoaderState.state_dict() of the same
    rank, worker count and batch size) resumes exactly where that state was taken."""
    check_train_split(shards, batch_size=batch_size, world_size=world_size, num_workers=num_workers)
    stream = TrainStream(
        shards,
        image_size=image_size,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
        state=state,
    )
    return _loader(stream, num_workers)


def build_eval_loader(
    shards: Shards,
    *,
    image_size: int,
    batch_size: int,
    num_workers: int,
    rank: int,
    world_size: int,
    limit: int | None = None,
) -> DataLoader:
    stream = EvalStream(
        shards,
        image_size=image_size,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        limit=limit,
    )
    return _loader(stream, num_workers)


@functools.cache
def _worker_context() -> multiprocessing.context.BaseContext:
    """Start method for loader workers: forkserver, never plain fork.

    By the time loaders start, the trainer runs threads (gloo's, TensorBoard's writer,
    the progress bar); a fork() copies whatever lock one of them holds and the worker can
    hang before it runs a line (seen here: a 2-rank run froze creating its eval loader).
    The fork server is a fresh process that imports the loader once; workers fork from it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["distcolor.data.loader"])
    return context


def _loader(stream: IterableDataset, num_workers: int) -> DataLoader:
    # batch_size=None: the stream already yields whole batches built on the workers.
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers > 0 else None,
        multiprocessing_context=_worker_context() if num_workers > 0 else None,
    )
