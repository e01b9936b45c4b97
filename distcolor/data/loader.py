"""Streaming loader: shards -> batches of uint8 (gray, rgb) crops, decoded on worker processes.

Every rank reads its own data (split here, not by `accelerator.prepare`, whose
`dispatch_batches` would make rank 0 read everything and whose other mode has every
rank read all and keep 1/N). Webdataset's own defaults are not used: its node
splitter raises when WORLD_SIZE > 1, its resampling is not reproducible and its
error handler re-raises; each choice is made here, explicitly.

A reader is one (rank, logical worker). It reads in *rounds*:

- `data.sampling=epochs`: round e is epoch e. The shard list is shuffled with seed
  (seed, e); rank r takes every world-th shard, worker w every num_workers-th of
  those, so readers are disjoint and each training sample is read once per epoch.
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
"""

from __future__ import annotations

import io
import itertools
import math
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distcolor.data.catalog import Shard
from distcolor.data.tarstream import tar_samples
from distcolor.data.workers import process_context
from distcolor.errors import UserError

JITTER = 1.125  # train crops come from images resized to 1.125x the crop (pix2pix: 286 -> 256)
SLACK = 1.15  # train crops of images up to 1.15x the jittered size skip the resize
RESAMPLE_SHARDS = 4  # shards per resampled round: the shuffle buffer mixes across them
MIX_BLOCK = 4096  # source draws generated per seeded block (resume jumps to a block)
PREFETCH = 4  # batches each loader worker prepares ahead
ALL = "*"  # the stream tag when sources are not weighted
# Member extensions webdataset's default decoders would unpickle (or torch.load unsafely).
PICKLED = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "npz"}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# -- decoding and views ------------------------------------------------------------------


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
        # The model's input is PIL's grayscale: what a black-and-white photo of the scene holds.
        gray_array[i, 0] = image.convert("L")
    return {
        "gray": gray,
        "rgb": rgb.permute(0, 3, 1, 2),
        "keys": keys,
        "sources": sources,
        "skipped": skipped,
        "release": release,
        "buffer": buffer,
    }


# -- raw samples -------------------------------------------------------------------------


class _SkipCounter:
    """Error handler that warns, counts and carries on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, err: Exception) -> bool:
        self.count += 1
        warnings.warn(f"skipping unreadable shard data: {err!r}", stacklevel=2)
        return True


def _samples(urls: list[str], counter: _SkipCounter) -> Iterator[dict]:
    """Raw samples (member bytes, nothing decoded); shards with pickled members refused."""
    refused: set[str] = set()
    for sample in tar_samples(urls, counter):
        url = sample.get("__url__")
        if url in refused:
            continue
        pickled = [k for k in sample if not k.startswith("__") and k.rsplit(".", 1)[-1] in PICKLED]
        if pickled:
            refused.add(url)
            counter(
                ValueError(
                    f"refusing {url}: it carries pickled member {sample['__key__']}.{pickled[0]} "
                    "(shard data is never unpickled); the rest of this shard is skipped"
                )
            )
            continue
        yield sample


class _NothingDecodable(Exception):
    pass


class _Rounds:
    """One reader's endless stream of (sample, decoded image or None) over `shards`.

    `position` is (round, raw samples read in it) after the last sample handed out."""

    def __init__(
        self,
        tag: str,
        shards: list[Shard],
        *,
        stream: TrainStream,
        worker: int,
        num_workers: int,
        counter: _SkipCounter,
        start: tuple[int, int],
    ) -> None:
        self.tag, self.shards, self.s = tag, shards, stream
        self.worker, self.num_workers, self.counter = worker, num_workers, counter
        self.position = start
        # Epochs: a reader with nothing decodable in 3 whole epochs (not one: a pipe: URL
        # may fail for a moment) will not find any. Resampled: a round draws a few shards
        # at random; give up after many empty rounds.
        self.give_up = 3 if stream.sampling == "epochs" else max(3, 3 * len(shards))

    def round_shards(self, round_: int) -> tuple[list[Shard], int | None]:
        """This reader's shards in `round_`, and how many raw samples it takes from them.

        Epochs: the shuffled shards are dealt to the world x num_workers readers biggest
        first, each to the reader holding the fewest samples so far, and every reader
        takes as many samples as the smallest share. Equal shares keep readers in the
        same epoch at the same step, so none re-reads a shard another is still reading;
        what is left out (less than a shard per reader) differs from epoch to epoch."""
        s = self.s
        if s.sampling == "resampled":
            rng = random.Random(f"{s.seed}:{self.tag}:{round_}:{s.rank}:{self.worker}")
            weights = [sh.count for sh in self.shards]
            return rng.choices(self.shards, weights=weights, k=RESAMPLE_SHARDS), None
        order = list(self.shards)
        random.Random(f"{s.seed}:{self.tag}:{round_}").shuffle(order)
        order.sort(key=lambda sh: -sh.count)  # stable: equal sizes keep the shuffled order
        loads = [0] * (s.world_size * self.num_workers)
        me, mine = s.rank * self.num_workers + self.worker, []
        for shard in order:
            reader = loads.index(min(loads))
            loads[reader] += shard.count
            if reader == me:
                mine.append(shard)
        random.Random(f"{s.seed}:{self.tag}:{round_}:{me}").shuffle(mine)
        return mine, min(loads)

    def __iter__(self) -> Iterator[tuple[dict, Image.Image | None]]:
        s = self.s
        round_, read = self.position
        empty = 0
        while True:
            shards, quota = self.round_shards(round_)
            rng = random.Random(f"{s.seed}:{self.tag}:{round_}:{s.rank}:{self.worker}:buffer")
            raw = _samples([sh.url for sh in shards], self.counter)
            raw = wds.shuffle(s.shuffle_buffer, initial=s.shuffle_buffer, rng=rng)(raw)
            raw = itertools.islice(raw, quota)
            from_start, good = read == 0, 0
            errors = self.counter.count
            for _ in itertools.islice(raw, read):  # read before the resume point: not decoded
                pass
            self.counter.count = errors  # errors in there were counted before the stop
            for sample in raw:
                read += 1
                self.position = (round_, read)
                image = decode(sample.get("jpg"), s.min_side)
                good += image is not None
                yield sample, image
            empty = empty + 1 if (good == 0 and from_start) else 0
            if empty >= self.give_up:
                raise _NothingDecodable(
                    f"data.shards: loader worker {self.worker} of rank {s.rank} found no "
                    f"decodable image in {empty} whole round(s) of {s.sampling} sampling"
                )
            round_, read = round_ + 1, 0
            self.position = (round_, 0)


class _Reader:
    """One (rank, logical worker): its streams and, with source weights, the seeded draws
    that pick which stream each next sample comes from."""

    def __init__(self, stream: TrainStream, worker: int, num_workers: int, position: dict) -> None:
        self.counter = _SkipCounter()
        self.seed, self.rank, self.worker = stream.seed, stream.rank, worker
        self.pulls = int(position.get("pulls", 0))
        saved = position.get("streams", {})
        self.streams = {
            tag: _Rounds(
                tag,
                shards,
                stream=stream,
                worker=worker,
                num_workers=num_workers,
                counter=self.counter,
                start=tuple(saved.get(tag, (stream.first_round.get(tag, 0), 0))),
            )
            for tag, shards in stream.groups().items()
        }
        tags = list(self.streams)
        weights = np.array([stream.weights.get(t, 1.0) for t in tags], dtype=np.float64)
        self.tags, self.cumulative = tags, np.cumsum(weights / weights.sum())

    def position(self) -> dict:
        return {
            "pulls": self.pulls,
            "streams": {t: list(r.position) for t, r in self.streams.items()},
        }

    def _draws(self) -> Iterator[str]:
        if len(self.tags) == 1:
            yield from itertools.repeat(self.tags[0])
        block, offset = divmod(self.pulls, MIX_BLOCK)
        while True:
            rng = np.random.default_rng([self.seed, self.rank, self.worker, block])
            picks = np.searchsorted(self.cumulative, rng.random(MIX_BLOCK), side="right")
            for pick in picks[offset:]:
                yield self.tags[min(int(pick), len(self.tags) - 1)]
            block, offset = block + 1, 0

    def __iter__(self) -> Iterator[tuple[dict, Image.Image | None, str]]:
        iterators = {t: iter(r) for t, r in self.streams.items()}
        for tag in self._draws():
            sample, image = next(iterators[tag])
            self.pulls += 1
            yield sample, image, tag


def _batches(
    items: Iterator[tuple[dict, Image.Image | None, str]],
    counter: _SkipCounter,
    view: Callable[[Image.Image, dict], Image.Image],
    batch_size: int,
    *,
    keep_partial: bool,
    source_of: Callable[[dict, str], str],
    buffers: BatchBuffers | None = None,
) -> Iterator[dict]:
    """Crop (`view`) and batch decoded samples; undecodable ones are counted and warned
    about, and each batch's `skipped` says how many were met since the previous batch."""
    images: list[Image.Image] = []
    keys: list[str] = []
    sources: list[str] = []
    reported = counter.count  # errors met before this stream (e.g. while skipping) are old
    for sample, image, tag in items:
        if image is None:
            key, url = sample.get("__key__"), sample.get("__url__")
            counter(ValueError(f"undecodable image in sample {key!r} of {url}"))
            continue
        images.append(view(image, sample))
        keys.append(sample["__key__"])
        sources.append(source_of(sample, tag))
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
        *,
        image_size: int,
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        rank: int,
        world_size: int,
        sampling: str = "epochs",
        source_weights: dict[str, float] | None = None,
        state: dict | None = None,
    ) -> None:
        self.shards, self.image_size, self.batch_size = shards, image_size, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.sampling = sampling
        self.weights = dict(source_weights or {})
        self.state = state
        # Draft-decode only what is far larger than the crop's jittered size.
        self.min_side = round(image_size * JITTER)
        self.first_round: dict[str, int] = {}
        self.source_by_url = {s.url: s.source for s in shards}

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
        reader = _Reader(self, logical, num_workers, state.position(logical))

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
                source_of=lambda sample, tag: tag if tag != ALL else self._source(sample),
                # The DataLoader holds up to PREFETCH batches per worker, the trainer one more.
                buffers=BatchBuffers(keep=PREFETCH + 2),
            ):
                batch.update(worker=logical, position=reader.position())
                yield batch
        except _NothingDecodable as err:
            yield {"fatal": str(err)}

    def _source(self, sample: dict) -> str:
        return self.source_by_url.get(sample.get("__url__"), "?")


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
        counter = _SkipCounter()
        samples = itertools.islice(_samples([s.url for s in self.shards], counter), self.limit)
        source = {s.url: s.source for s in self.shards}
        mine = (
            (sample, decode(sample.get("jpg"), self.image_size), "")
            for i, sample in enumerate(samples)
            if i % slots == slot
        )
        yield from _batches(
            mine,
            counter,
            lambda image, _: eval_view(image, self.image_size),
            self.batch_size,
            keep_partial=True,
            source_of=lambda sample, _: source.get(sample.get("__url__"), "?"),
        )


# -- builders ---------------------------------------------------------------------------------


def check_train_split(
    shards: list[Shard],
    *,
    batch_size: int,
    world_size: int,
    num_workers: int,
    sampling: str = "epochs",
    source_weights: dict[str, float] | None = None,
) -> None:
    """UserError naming the setting when the shards cannot feed every rank and worker."""
    present = sorted({s.source for s in shards})
    if source_weights:
        unknown = sorted(set(source_weights) - set(present))
        if unknown:
            raise UserError(
                f"data.source_weights: no train shards of {', '.join(unknown)} "
                f"(sources: {', '.join(present)})"
            )
        if not any(w > 0 for w in source_weights.values()):
            raise UserError("data.source_weights: at least one weight must be > 0")
    if sampling == "resampled":
        return  # every reader draws from every shard
    readers = world_size * max(num_workers, 1)
    if len(shards) < readers:
        raise UserError(
            f"data.num_workers: {len(shards)} train shards cannot feed {world_size} rank(s) x "
            f"{max(num_workers, 1)} worker(s) in epoch mode; lower data.num_workers, write "
            "smaller shards, or use data.sampling=resampled"
        )
    # Worst case: a reader gets the fewest shards, and the smallest ones.
    fewest = len(shards) // readers
    smallest = sum(sorted(s.count for s in shards)[:fewest])
    if smallest < batch_size:
        raise UserError(
            f"data.batch_size: {batch_size} is more than the {smallest} samples one loader "
            f"worker may get per epoch; lower data.batch_size or data.num_workers"
        )


def build_train_loader(
    shards: list[Shard],
    *,
    image_size: int,
    batch_size: int,
    num_workers: int,
    shuffle_buffer: int,
    seed: int,
    rank: int,
    world_size: int,
    sampling: str = "epochs",
    source_weights: dict[str, float] | None = None,
    state: dict | None = None,
) -> DataLoader:
    """Loader of endless training batches; `state` (a LoaderState.state_dict() of the same
    rank, worker count and batch size) resumes exactly where that state was taken."""
    check_train_split(
        shards,
        batch_size=batch_size,
        world_size=world_size,
        num_workers=num_workers,
        sampling=sampling,
        source_weights=source_weights,
    )
    stream = TrainStream(
        shards,
        image_size=image_size,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
        sampling=sampling,
        source_weights=source_weights,
        state=state,
    )
    return _loader(stream, num_workers)


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
    )
