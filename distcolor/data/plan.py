"""Planning a shard build: which input goes into which shard, decided before any decoding.

    inputs (files per source layout, synthetic scenes)
      -> content hash of each file's bytes (cheap: no decode)
      -> exact duplicates dropped (first seen kept), split from the hash and the seed
      -> per (split, source): ordered by a seeded hash, cut into shards of `shard_size`

Every shard is then a self-contained job whose `digest` covers its inputs and the
settings that shape its bytes, so a re-run can tell a finished shard it may keep from
one it must rebuild. Ordering by hash rather than by path spreads each folder (a
VGGFace2 identity, an ADE20K category) over all of a source's shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Input:
    """One thing to shard: file `root`/`ref`, or synthetic scene `index`."""

    source: str
    ref: str  # path relative to the source root, or "scene-000042"
    digest: str  # sha256 of the file's bytes (or of the scene's identity)
    root: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one shard, and nothing that varies between runs."""

    name: str  # e.g. "train-faces-000003" (the tar is name + ".tar")
    split: str
    source: str
    inputs: tuple[Input, ...]
    settings: dict = field(hash=False)  # size, quality, min_colorfulness, synthetic_size ...

    @property
    def digest(self) -> str:
        spec = {
            "settings": self.settings,
            "inputs": [(i.source, i.ref, i.digest) for i in self.inputs],
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def assign_split(digest: str, *, seed: int, test_fraction: float) -> str:
    """'train' or 'test' from the content hash alone, so adding inputs never moves old ones."""
    h = hashlib.sha256(f"{seed}:{digest}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < test_fraction else "train"


def synthetic_inputs(count: int, *, size: int, seed: int) -> list[Input]:
    """Scenes are unique by construction; their identity stands in for a content hash."""
    return [
        Input(
            "synthetic",
            f"scene-{i:06d}",
            hashlib.sha256(f"synthetic:{seed}:{size}:{i}".encode()).hexdigest(),
            index=i,
        )
        for i in range(count)
    ]


@dataclass
class Plan:
    jobs: list[ShardJob]
    duplicates: list[dict]  # {"path": ..., "same_as": ...} for every input dropped as a copy


def make_plan(
    inputs: Iterable[Input],
    *,
    shard_size: int,
    test_fraction: float,
    seed: int,
    settings: dict,
) -> Plan:
    """Deduplicate, split and cut `inputs` (in source order) into shard jobs."""
    first: dict[str, Input] = {}
    duplicates = []
    groups: dict[tuple[str, str], list[Input]] = {}
    for item in inputs:
        if item.digest in first:
            kept = first[item.digest]
            duplicates.append(
                {"path": f"{item.source}:{item.ref}", "same_as": f"{kept.source}:{kept.ref}"}
            )
            continue
        first[item.digest] = item
        split = assign_split(item.digest, seed=seed, test_fraction=test_fraction)
        groups.setdefault((split, item.source), []).append(item)
    jobs = []
    for (split, source), items in sorted(groups.items()):
        items.sort(key=lambda i: hashlib.sha256(f"{seed}:order:{i.digest}".encode()).digest())
        for n, start in enumerate(range(0, len(items), shard_size)):
            jobs.append(
                ShardJob(
                    name=f"{split}-{source}-{n:06d}",
                    split=split,
                    source=source,
                    inputs=tuple(items[start : start + shard_size]),
                    settings=settings,
                )
            )
    return Plan(jobs, duplicates)
