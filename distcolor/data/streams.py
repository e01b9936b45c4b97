"""Raw samples for one reader: shard rounds (epochs or resampled), source draws, refusal
of pickled members. See `distcolor.data.loader` for the scheme as a whole."""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import webdataset as wds
from PIL import Image

from distcolor.data.batching import decode
from distcolor.data.catalog import Shard
from distcolor.data.tarstream import tar_samples


class StreamSpec(Protocol):
    """What a reader needs of the train stream it belongs to (distcolor.data.loader's
    TrainStream): the plan, not the loader, so this module needs nothing from it."""

    shards: list[Shard]
    seed: int
    rank: int
    world_size: int
    sampling: str
    shuffle_buffer: int
    min_side: int
    weights: dict[str, float]
    first_round: dict[str, int]

    def groups(self) -> dict[str, list[Shard]]: ...


RESAMPLE_SHARDS = 4  # shards per resampled round: the shuffle buffer mixes across them
MIX_BLOCK = 4096  # source draws generated per seeded block (resume jumps to a block)
ALL = "*"  # the stream tag when sources are not weighted
# Member extensions webdataset's default decoders would unpickle (or torch.load unsafely).
PICKLED = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "npz"}


def deal_shards(shards: list[Shard], readers: int) -> tuple[list[list[Shard]], int]:
    """Shards dealt to `readers`, biggest first, each to the reader holding the fewest
    samples so far (ties keep the given order); and the smallest share, which every
    reader takes in an epoch. The shares depend only on the shard sizes, not their order."""
    dealt: list[list[Shard]] = [[] for _ in range(readers)]
    loads = [0] * readers
    for shard in sorted(shards, key=lambda sh: -sh.count):  # stable sort
        reader = loads.index(min(loads))
        loads[reader] += shard.count
        dealt[reader].append(shard)
    return dealt, min(loads)


class SkipCounter:
    """Error handler that warns, counts and carries on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, err: Exception) -> bool:
        self.count += 1
        warnings.warn(f"skipping unreadable shard data: {err!r}", stacklevel=2)
        return True


def raw_samples(urls: list[str], counter: SkipCounter) -> Iterator[dict]:
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


class NothingDecodable(Exception):
    pass


class Rounds:
    """One reader's endless stream of (sample, decoded image or None) over `shards`.

    `position` is (round, raw samples read in it) after the last sample handed out."""

    def __init__(
        self,
        tag: str,
        shards: list[Shard],
        *,
        stream: StreamSpec,
        worker: int,
        num_workers: int,
        counter: SkipCounter,
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
        dealt, quota = deal_shards(order, s.world_size * self.num_workers)
        me = s.rank * self.num_workers + self.worker
        mine = dealt[me]
        random.Random(f"{s.seed}:{self.tag}:{round_}:{me}").shuffle(mine)
        return mine, quota

    def __iter__(self) -> Iterator[tuple[dict, Image.Image | None]]:
        s = self.s
        round_, read = self.position
        empty = 0
        while True:
            shards, quota = self.round_shards(round_)
            rng = random.Random(f"{s.seed}:{self.tag}:{round_}:{s.rank}:{self.worker}:buffer")
            raw = raw_samples([sh.url for sh in shards], self.counter)
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
                raise NothingDecodable(
                    f"data.shards: loader worker {self.worker} of rank {s.rank} found no "
                    f"decodable image in {empty} whole round(s) of {s.sampling} sampling"
                )
            round_, read = round_ + 1, 0
            self.position = (round_, 0)


class Reader:
    """One (rank, logical worker): its streams and, with source weights, the seeded draws
    that pick which stream each next sample comes from."""

    def __init__(self, stream: StreamSpec, worker: int, num_workers: int, position: dict) -> None:
        self.counter = SkipCounter()
        self.seed, self.rank, self.worker = stream.seed, stream.rank, worker
        self.source_by_url = {s.url: s.source for s in stream.shards}
        self.pulls = int(position.get("pulls", 0))
        saved = position.get("streams", {})
        self.streams = {
            tag: Rounds(
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
        """(sample, decoded image or None, its source)."""
        iterators = {t: iter(r) for t, r in self.streams.items()}
        for tag in self._draws():
            sample, image = next(iterators[tag])
            self.pulls += 1
            yield sample, image, self.source_by_url[sample["__url__"]]
