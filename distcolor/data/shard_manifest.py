"""The manifest a shard build writes last: how it was built, what each split and source
holds, and what was dropped (duplicates) or skipped (with why). distcolor/data/catalog.py
reads it back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from distcolor import __version__
from distcolor.data.plan import SPLITS, Plan
from distcolor.data.shard_writer import FORMAT_VERSION
from distcolor.data.sources import Skip


def manifest_header(
    *,
    seed: int,
    test_fraction: float,
    size: int,
    quality: int,
    shard_size: int,
    min_colorfulness: float,
    folders: list[tuple[str, Path]],
    warnings: list[str],
    synthetic: int,
    synthetic_size: int,
    synthetic_seed: int,
) -> dict:
    """The build's arguments as the manifest records them (its counts come after)."""
    header = {
        "format": FORMAT_VERSION,
        "created_by": f"distcolor {__version__}",
        "seed": seed,
        "test_fraction": test_fraction,
        "settings": {
            "size": size,
            "quality": quality,
            "shard_size": shard_size,
            "min_colorfulness": min_colorfulness,
        },
        "roots": {name: str(root) for name, root in folders},
        "warnings": warnings,
    }
    if synthetic > 0 and not folders:
        # Lets the trainer tell whether a folder holds the synthetic set its config asks for.
        header["settings"]["synthetic"] = {
            "count": synthetic,
            "size": synthetic_size,
            "seed": synthetic_seed,
            "shard_size": shard_size,
            "test_fraction": test_fraction,
        }
    return header


def make_manifest(
    plan: Plan, records: dict[str, dict], scan_skips: list[Skip], *, header: dict
) -> dict:
    """`header` plus the counts of every shard `plan` made (`records`, by shard name)."""
    splits = {s: {"count": 0, "shards": []} for s in SPLITS}
    sources: dict[str, dict] = {}
    skipped = [{"path": s.path, "reason": s.reason, "kind": s.kind} for s in scan_skips]
    colour: dict[str, list[float]] = {}
    for job in plan.jobs:
        record = records[job.name]
        skipped += record["skipped"]
        entry = sources.setdefault(job.source, {"train": 0, "test": 0, "skipped": 0})
        entry[job.split] += record["count"]
        entry["skipped"] += len(record["skipped"])
        colour.setdefault(job.source, []).extend(record["colorfulness"])
        if record["count"]:  # a shard whose every input was skipped is left out
            splits[job.split]["count"] += record["count"]
            splits[job.split]["shards"].append(
                {"file": record["file"], "source": job.source, "count": record["count"]}
            )
    for name, values in colour.items():
        if values:
            sources[name]["colorfulness"] = _percentiles(values)
    return {
        **header,
        "splits": splits,
        "sources": dict(sorted(sources.items())),
        "duplicates": len(plan.duplicates),
        "duplicate_inputs": plan.duplicates,
        "skipped_count": len(skipped),
        "skipped_by_kind": dict(sorted(Counter(s["kind"] for s in skipped).items())),
        "skipped": skipped,
    }


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p5": pick(0.05), "p50": pick(0.5), "p95": pick(0.95)}


def few_shards_warning(manifest: dict, readers: int) -> str | None:
    """A warning when the train split has fewer shards than the readers a run will use.

    In epoch mode each (rank, loader worker) reads whole shards of its own."""
    shards = len(manifest["splits"]["train"]["shards"])
    if shards >= readers:
        return None
    return (
        f"the train split has {shards} shard(s), fewer than the {readers} readers planned "
        "(--readers: ranks x loader workers); each reader needs a shard of its own in epoch "
        "mode: lower --shard-size"
    )
