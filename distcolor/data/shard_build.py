"""Building a WebDataset shard set: parallel, resumable, atomic; stable split, dedupe, manifest.

Layout written to `out/`: `train-<source>-000000.tar ...`, `test-<source>-000000.tar ...`
(each shard holds one source, so the loader can weight sources) and, last,
`manifest.json`. A folder without a manifest is incomplete (the loader refuses it).

One build per folder at a time: a build holds `out`'s writer lock (distcolor/locks.py,
`.<name>.lock` beside it) from before it writes anything to the end; a second one is
refused with a line naming the first.

A build works in the hidden folder `.<name>.partial/` beside `out` (same filesystem, so
the final moves are renames):
- each shard is written there by distcolor/data/shard_writer.py, and is finished only
  when its record names the same plan;
- a re-run with the same arguments keeps every finished shard and writes the rest, so
  a killed build resumes where it stopped (webdataset's ShardWriter would write
  straight to the final name, leaving a half tar that looks finished);
- when every shard is done, the manifest (distcolor/data/shard_manifest.py) is written
  into that folder, which then replaces `out` whole (distcolor/data/publish.py: an atomic
  exchange of the two folders on Linux), so a rebuild (`--overwrite`) that fails or is
  killed at any point, the publish included, leaves a complete dataset in `out`: the
  previous one until the new one is complete. Hence `out` holds a shard set and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import track

from distcolor.data.catalog import MANIFEST, SHARD_NAME
from distcolor.data.layouts import find_images
from distcolor.data.plan import SPLITS, Input, Plan, make_plan, synthetic_inputs
from distcolor.data.publish import publish, recover, staging_path
from distcolor.data.shard_manifest import make_manifest, manifest_header
from distcolor.data.shard_writer import finished_records, shard_settings, write_json, write_shard
from distcolor.data.sources import DEFAULT_MIN_COLORFULNESS, Skip, read_input
from distcolor.data.workers import guard_worker, process_context
from distcolor.errors import UserError
from distcolor.locks import folder_lock

Log = Callable[[str], None]

# What earlier versions left inside `out`: their staging folder, a manifest being written.
LEGACY_FILES = (".partial", f".{MANIFEST}.tmp")


def build_shards(
    out: Path,
    *,
    folders: list[tuple[str, Path]] = (),
    synthetic: int = 0,
    synthetic_size: int = 96,
    synthetic_seed: int = 0,
    size: int = 286,
    quality: int = 95,
    shard_size: int = 1000,
    test_fraction: float = 0.2,
    seed: int = 0,
    min_colorfulness: float = DEFAULT_MIN_COLORFULNESS,
    workers: int = 1,
    overwrite: bool = False,
    log: Log = print,
    lock: bool = True,
) -> dict:
    """Read every source, write shards + manifest to `out`; UserError if nothing was usable.

    Resumable: shards finished by an interrupted run with the same arguments are kept.
    lock: take `out`'s writer lock (False: the caller holds it)."""
    out = Path(out)
    folders = [(name, Path(root)) for name, root in folders]
    _check_arguments(out, folders, synthetic)
    real = Path(os.path.realpath(out))  # a link to the set: its parent stages and swaps
    # One writer at a time, from before anything is written (or deleted) to the end.
    writer = folder_lock(out, name=str(out), purpose="a shard build", log=log)
    with writer if lock else nullcontext():
        recover_interrupted(out)  # a publish that was killed: put a complete set back
        _check_out(out, overwrite)  # before any work: a long build must not fail at the end

        started = time.perf_counter()
        inputs, scan_skips, warnings = _scan(folders, out=out, workers=workers, log=log)
        if synthetic > 0:
            inputs += synthetic_inputs(synthetic, size=synthetic_size, seed=synthetic_seed)
        settings = shard_settings(
            size=size,
            quality=quality,
            min_colorfulness=min_colorfulness,
            synthetic_size=synthetic_size,
            synthetic_seed=synthetic_seed,
        )
        plan = make_plan(
            inputs, shard_size=shard_size, test_fraction=test_fraction, seed=seed, settings=settings
        )
        staging = staging_path(real)
        records = _write_shards(plan, staging, out=out, workers=workers, log=log)
        header = manifest_header(
            seed=seed,
            test_fraction=test_fraction,
            size=size,
            quality=quality,
            shard_size=shard_size,
            min_colorfulness=min_colorfulness,
            folders=folders,
            warnings=warnings,
            synthetic=synthetic,
            synthetic_size=synthetic_size,
            synthetic_seed=synthetic_seed,
        )
        manifest = make_manifest(plan, records, scan_skips, header=header)
        _refuse_if_empty(manifest, staging)
        _publish(staging, real, manifest)
        seconds = time.perf_counter() - started
        manifest_inputs = len(inputs) + len(scan_skips)
        log(
            f"sharded {manifest_inputs} inputs in {seconds:.1f} s "
            f"({manifest_inputs / max(seconds, 1e-9):.0f} inputs/s, {workers} worker(s))"
        )
        return manifest


def recover_interrupted(out: Path) -> None:
    """What a killed publish left beside `out`, repaired (the caller holds the lock)."""
    try:
        recover(Path(os.path.realpath(out)), _is_complete)
    except OSError as err:
        raise UserError(f"{out}: cannot repair an interrupted build ({err})") from None


# -- checks before any work ----------------------------------------------------------------


def _check_arguments(out: Path, folders: list[tuple[str, Path]], synthetic: int) -> None:
    if not folders and synthetic <= 0:
        raise UserError("nothing to shard: give --source NAME=DIR and/or --synthetic N")
    names = Counter(name for name, _ in folders) + Counter(["synthetic"] * (synthetic > 0))
    for name, root in folders:
        if not name.isidentifier():
            raise UserError(f"--source {name!r}: names are letters, digits and _ only")
        if names[name] > 1:
            raise UserError(f"--source {name}: the name is used twice")
        if not root.is_dir():
            raise UserError(f"--source {name}={root}: folder does not exist")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder")


def _check_out(out: Path, overwrite: bool) -> None:
    if (out / MANIFEST).exists() and not overwrite:
        raise UserError(f"{out} already holds shards (manifest.json); pass --overwrite to replace")
    if not out.is_dir():
        return
    if os.path.ismount(os.path.realpath(out)):
        raise UserError(
            f"{out} is a mount point; a build replaces the folder whole: use a folder inside it"
        )
    foreign = sorted(p.name for p in out.iterdir() if not _is_shard_set_file(p.name))
    if foreign:
        raise UserError(
            f"{out} holds files that are not shards (e.g. {foreign[0]}); a build replaces the "
            "folder whole: move them out or choose another folder"
        )


def _is_shard_set_file(name: str) -> bool:
    return name == MANIFEST or name in LEGACY_FILES or SHARD_NAME.fullmatch(name) is not None


def _is_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


# -- work on a pool of processes ------------------------------------------------------------


def _progress(items: Iterable, total: int, what: str) -> Iterable:
    """A rich progress bar on a terminal; plain iteration in log files."""
    return track(items, description=what, total=total, disable=not Console().is_terminal)


def _map(fn: Callable, items: list, workers: int, *, ordered: bool) -> Iterator:
    """`fn` over `items` on `workers` processes (in this process when 1)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    # guard_worker: pool workers fork from the loader's fork server, which ignores SIGTERM;
    # they must still stop when this process terminates the pool, and die with it.
    pool = process_context().Pool(
        min(workers, len(items)), initializer=guard_worker, initargs=(os.getpid(),)
    )
    with pool:
        chunk = max(1, min(64, len(items) // (workers * 8)))
        mapper = pool.imap if ordered else pool.imap_unordered
        yield from mapper(fn, items, chunksize=chunk)


def _hash_file(job: tuple[str, str, str]) -> Input | Skip:
    source, root, rel = job
    raw = read_input(Path(root) / rel)
    if isinstance(raw, Skip):
        return raw
    return Input(source, rel, hashlib.sha256(raw).hexdigest(), root=root)


def _scan(
    folders: list[tuple[str, Path]], *, out: Path, workers: int, log: Log
) -> tuple[list[Input], list[Skip], list[str]]:
    """Every input file of every source, hashed; (inputs, unreadable files, layout warnings)."""
    jobs, warnings = [], []
    for name, root in folders:
        paths, warning = find_images(name, root, exclude=out)
        if warning:
            warnings.append(warning)
            log(f"warning: {warning}")
        jobs += [(name, str(root), p.relative_to(root).as_posix()) for p in paths]
    inputs, skipped = [], []
    hashed = _map(_hash_file, jobs, workers, ordered=True)  # source order decides duplicates
    for result in _progress(hashed, len(jobs), "hashing inputs"):
        (skipped if isinstance(result, Skip) else inputs).append(result)
    return inputs, skipped, warnings


def _write_shards(plan: Plan, staging: Path, *, out: Path, workers: int, log: Log) -> dict:
    """Records of every shard of `plan` (by name): those an earlier run finished in
    `staging`, then the rest, written there on `workers` processes."""
    try:
        staging.mkdir(exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot write there ({err.strerror or err})") from None
    records = finished_records(staging, plan.jobs)
    todo = [job for job in plan.jobs if job.name not in records]
    if records:
        log(f"resuming: {len(records)} of {len(plan.jobs)} shards already written")
    written = _map(write_shard, [(job, str(staging)) for job in todo], workers, ordered=False)
    for record in _progress(written, len(todo), "writing shards"):
        records[record["file"].removesuffix(".tar")] = record
    return records


# -- publishing ------------------------------------------------------------------------------


def _refuse_if_empty(manifest: dict, staging: Path) -> None:
    """UserError, naming a skipped input, when no split got a sample."""
    if sum(manifest["splits"][s]["count"] for s in SPLITS) > 0:
        return
    shutil.rmtree(staging, ignore_errors=True)  # nothing usable: keep what `out` had
    first = manifest["skipped"][0] if manifest["skipped"] else None
    example = f"; e.g. {first['path']}: {first['reason']}" if first else ""
    raise UserError(f"no usable images found ({manifest['skipped_count']} inputs skipped{example})")


def _publish(staging: Path, out: Path, manifest: dict) -> None:
    """Write the manifest into `staging` (a complete set from then on), drop the build's
    records, and swap the folder in place of `out`."""
    keep = {shard["file"] for split in SPLITS for shard in manifest["splits"][split]["shards"]}
    try:
        write_json(staging / MANIFEST, manifest, indent=2)
        for path in staging.iterdir():  # records, and shards whose every input was skipped
            if path.name not in keep | {MANIFEST}:
                path.unlink()
        publish(staging, out)
    except OSError as err:
        raise UserError(f"{out}: could not move the finished shards in place ({err})") from None
