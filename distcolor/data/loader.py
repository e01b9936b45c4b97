"""Streaming loader: shards -> batches of uint8 (gray, rgb) crops, decoded on worker processes.

Every rank reads its own data (split here, not by `accelerator.prepare`, whose
`dispatch_batches` would make rank 0 read everything and whose other mode has every
rank read all and keep 1/N). Webdataset's own defaults are not used: its node
splitter raises when WORLD_SIZE > 1, its resampling is not reproducible and its
error handler re-raises; each choice is made here, explicitly.

A reader is one (rank, logical worker). It reads in *rounds*:

- `data.sampling=epochs`: round e is epoch e. The shard list is shuffled with seed
  (seed, e) and dealt to the world x num_workers readers, biggest shards first, each
  to the reader with the fewest samples so far; every reader then takes the smallest
  share. Readers are disjoint, stay in step (equal shares), and each training sample
  is read at most once per epoch (less than a shard per reader is left out).
- `data.sampling=resampled`: round k draws a few shards with replacement (weighted by
  sample count, seeded by (seed, k, rank, worker)); the stream never ends and needs
  no shard per reader. With `data.source_weights`, each source is its own stream and
  every sample's source is drawn by weight, so a source of millions of images does
  not drown one of thousands.

Within a round a seeded shuffle buffer mixes samples across shards; crops and flips
are seeded per sample. The training stream is infinite in both modes (rounds follow
each other), so every rank runs the same number of steps whatever the shard sizes.
Each batch carries its reader's position, per stream (round, raw samples read) and
the number of source draws; a resumed stream skips that many raw samples without
decoding them, so resume is exact and cheap. The DataLoader takes batches from its
workers round-robin, so global batch i is batch i // num_workers of worker
i % num_workers; a resumed loader rotates its workers to match.

Only `jpg` members are decoded (and `json` is read as text); a shard carrying a
pickled member (.pyd, .pth, ...) is refused from that member on, never unpickled.
Undecodable images, truncated tars and refused shards are skipped, counted in the
batch's `skipped` and warned about; a reader that finds nothing decodable in a whole
round (epochs) or many rounds (resampled) reports it and the trainer stops with one line.

Modules: `streams` (rounds, source draws, raw samples), `batching` (decoding, views,
batch buffers), `tarstream` (reading tars); this one holds the datasets, the resumable
`LoaderState` and the builders.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distcolor.data.batching import (
    JITTER,
    BatchBuffers,
    decode,
    eval_view,
    make_batch,
    recycle_batches,
    train_view,
)
from distcolor.data.catalog import Shard
from distcolor.data.streams import (
    ALL,
    NothingDecodable,
    Reader,
    SkipCounter,
    deal_shards,
    raw_samples,
)
from distcolor.data.workers import process_context, worker_init
from distcolor.errors import UserError

if TYPE_CHECKING:
    from distcolor.config import DataConfig

__all__ = [
    "LoaderState",
    "build_eval_loader",
    "build_train_loader",
    "check_train_split",
    "recycle_batches",
]

PREFETCH = 4  # batches each loader worker prepares ahead


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _batches(
    items: Iterator[tuple[dict, Image.Image | None, str]],
    counter: SkipCounter,
    view: Callable[[Image.Image, dict], Image.Image],
    batch_size: int,
    *,
    keep_partial: bool,
    buffers: BatchBuffers | None = None,
) -> Iterator[dict]:
    """Crop (`view`) and batch (sample, decoded image or None, source) items; undecodable
    ones are counted and warned about, and each batch's `skipped` says how many were met
    since the previous batch."""
    images: list[Image.Image] = []
    keys: list[str] = []
    sources: list[str] = []
    reported = counter.count  # errors met before this stream (e.g. while skipping) are old
    for sample, image, source in items:
        if image is None:
            key, url = sample.get("__key__"), sample.get("__url__")
            counter(ValueError(f"undecodable image in sample {key!r} of {url}"))
            continue
        images.append(view(image, sample))
        keys.append(sample["__key__"])
        sources.append(source)
        if len(images) == batch_size:
            yield make_batch(images, keys, sources, counter.count - reported, buffers)
            reported, images, keys, sources = counter.count, [], [], []
    if keep_partial and images:
        yield make_batch(images, keys, sources, counter.count - reported)


# -- resumable position --------------------------------------------------------------------


class LoaderState:
    """Where one rank's training stream stands, for exact resume.

    For each logical worker: the number of source draws made and, per stream, (round,
    raw samples read from that round's shuffled stream, unreadable ones included).
    Resuming skips those raw samples without decoding them, so a restart costs a read of
    the shard bytes, not a re-decode, and stays exact when some samples are corrupt.
    `batches` (batches consumed so far) fixes which worker the resumed DataLoader's first
    batch must come from; a worker with no batch yet starts at `first_round`. `skipped`
    counts unreadable samples this rank met, `mix` the images it used per source.
    """

    def __init__(self, num_workers: int, first_round: dict[str, int] | None = None) -> None:
        self.num_workers = max(num_workers, 1)
        self.first_round = dict(first_round or {})
        self.batches = 0
        self.skipped = 0
        self.mix: Counter = Counter()
        self.positions: dict[int, dict] = {}

    def update(self, batch: dict) -> None:
        """Record a consumed batch; a worker's fatal report becomes a one-line UserError."""
        if "fatal" in batch:
            raise UserError(batch["fatal"])
        self.positions[batch["worker"]] = batch["position"]
        self.batches += 1
        self.skipped += batch["skipped"]
        self.mix.update(batch["sources"])

    def position(self, worker: int) -> dict:
        return self.positions.get(worker, {})

    def state_dict(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "first_round": dict(self.first_round),
            "batches": self.batches,
            "skipped": self.skipped,
            "mix": dict(self.mix),
            "positions": {str(w): p for w, p in sorted(self.positions.items())},
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_workers = int(state["num_workers"])
        self.first_round = {t: int(r) for t, r in state["first_round"].items()}
        self.batches = int(state["batches"])
        self.skipped = int(state["skipped"])
        self.mix = Counter({s: int(n) for s, n in state.get("mix", {}).items()})
        self.positions = {int(w): p for w, p in state["positions"].items()}

    def next_rounds(self) -> dict[str, int]:
        """Per stream, the first round no worker has started: where a stream with another
        split of the data (world size, workers) begins without repeating old rounds."""
        rounds = dict(self.first_round)
        for position in self.positions.values():
            for tag, (round_, _) in position.get("streams", {}).items():
                rounds[tag] = max(rounds.get(tag, 0), round_ + 1)
        return rounds


# -- the datasets ----------------------------------------------------------------------------


class TrainStream(IterableDataset):
    """Infinite, resumable stream of training batches for one rank.

    Worker w plays logical worker (w + state.batches) % num_workers: the DataLoader always
    asks worker 0 first, while the uninterrupted run's next batch was due from that one.
    """

    def __init__(
        self,
        shards: list[Shard],
        data: DataConfig,
        *,
        seed: int,
        rank: int,
        world_size: int,
        state: dict | None = None,
    ) -> None:
        # Plain values, not the config: the stream is pickled to every loader worker.
        self.shards, self.image_size, self.batch_size = shards, data.image_size, data.batch_size
        self.shuffle_buffer, self.seed = data.shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.sampling = data.sampling
        self.weights = dict(data.source_weights or {})
        self.state = state
        # Draft-decode only what is far larger than the crop's jittered size.
        self.min_side = round(data.image_size * JITTER)
        self.first_round: dict[str, int] = {}

    def groups(self) -> dict[str, list[Shard]]:
        """Shards per stream: one per weighted source, else one over everything."""
        if not self.weights:
            return {ALL: list(self.shards)}
        return {
            name: [s for s in self.shards if s.source == name]
            for name, weight in sorted(self.weights.items())
            if weight > 0
        }

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        state = LoaderState(num_workers)
        if self.state is not None:
            state.load_state_dict(self.state)
        self.first_round = state.first_round
        logical = (worker + state.batches) % num_workers
        reader = Reader(self, logical, num_workers, state.position(logical))

        def view(image: Image.Image, sample: dict) -> Image.Image:
            rng = random.Random(f"{self.seed}:{sample['__key__']}:{reader.pulls}")
            return train_view(image, self.image_size, rng)

        try:
            for batch in _batches(
                iter(reader),
                reader.counter,
                view,
                self.batch_size,
                keep_partial=False,
                # The DataLoader holds up to PREFETCH batches per worker, the trainer one more.
                buffers=BatchBuffers(keep=PREFETCH + 2),
            ):
                batch.update(worker=logical, position=reader.position())
                yield batch
        except NothingDecodable as err:
            yield {"fatal": str(err)}


class EvalStream(IterableDataset):
    """One deterministic pass over the first `limit` samples of a split, centre-cropped.

    Sample i goes to reader slot i % (world_size * num_workers), so ranks and their
    workers see disjoint samples and together see each of the first `limit` once.
    """

    def __init__(
        self,
        shards: list[Shard],
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
        counter = SkipCounter()
        samples = itertools.islice(raw_samples([s.url for s in self.shards], counter), self.limit)
        source = {s.url: s.source for s in self.shards}
        mine = (
            (sample, decode(sample.get("jpg"), self.image_size), source[sample["__url__"]])
            for i, sample in enumerate(samples)
            if i % slots == slot
        )
        yield from _batches(
            mine,
            counter,
            lambda image, _: eval_view(image, self.image_size),
            self.batch_size,
            keep_partial=True,
        )


# -- builders ---------------------------------------------------------------------------------


def check_train_split(shards: list[Shard], data: DataConfig, *, world_size: int) -> None:
    """UserError naming the setting when the shards cannot feed every rank and worker."""
    present = sorted({s.source for s in shards})
    if data.source_weights:
        unknown = sorted(set(data.source_weights) - set(present))
        if unknown:
            raise UserError(
                f"data.source_weights: no train shards of {', '.join(unknown)} "
                f"(sources: {', '.join(present)})"
            )
        if not any(w > 0 for w in data.source_weights.values()):
            raise UserError("data.source_weights: at least one weight must be > 0")
    if data.sampling == "resampled":
        return  # every reader draws from every shard
    workers = max(data.num_workers, 1)
    readers = world_size * workers
    if len(shards) < readers:
        raise UserError(
            f"data.num_workers: {len(shards)} train shards cannot feed {world_size} rank(s) x "
            f"{workers} worker(s) in epoch mode; lower data.num_workers, write "
            "smaller shards, or use data.sampling=resampled"
        )
    _, share = deal_shards(shards, readers)  # what each reader takes per epoch
    if share < data.batch_size:
        raise UserError(
            f"data.batch_size: {data.batch_size} is more than the {share} samples each loader "
            f"worker takes per epoch; lower data.batch_size or data.num_workers"
        )


def build_train_loader(
    shards: list[Shard],
    data: DataConfig,
    *,
    seed: int,
    rank: int,
    world_size: int,
    state: dict | None = None,
) -> DataLoader:
    """Loader of endless training batches as `data` describes them, for one rank; `state`
    (a LoaderState.state_dict() of the same rank, worker count and batch size) resumes
    exactly where that state was taken."""
    check_train_split(shards, data, world_size=world_size)
    stream = TrainStream(shards, data, seed=seed, rank=rank, world_size=world_size, state=state)
    return _loader(stream, data.num_workers)


def build_eval_loader(
    shards: list[Shard],
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


def _loader(stream: IterableDataset, num_workers: int) -> DataLoader:
    # batch_size=None: the stream already yields whole batches built on the workers.
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=PREFETCH if num_workers > 0 else None,
        multiprocessing_context=process_context() if num_workers > 0 else None,
        worker_init_fn=worker_init(os.getpid()) if num_workers > 0 else None,
    )
