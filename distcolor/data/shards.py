"""Writing WebDataset shards: parallel, resumable, atomic; stable split, dedupe, manifest.

Layout written to `out/`: `train-<source>-000000.tar ...`, `test-<source>-000000.tar ...`
(each shard holds one source, so the loader can weight sources) and, last,
`manifest.json`. A folder without a manifest is incomplete (the loader refuses it).

One build per folder at a time: a build holds `out`'s writer lock (distcolor/locks.py,
`.<name>.lock` beside it) from before it writes anything to the end; a second one is
refused with a line naming the first.

A build works in the hidden folder `.<name>.partial/` beside `out` (same filesystem, so
the final moves are renames):
- each shard is written as `NAME.tmp`, renamed to `NAME.tar` when complete, and then
  gets a `NAME.json` record (its plan digest, counts, skipped inputs): a shard is
  finished only when its record exists and names the same plan;
- a re-run with the same arguments keeps every finished shard and writes the rest, so
  a killed build resumes where it stopped (webdataset's ShardWriter would write
  straight to the final name, leaving a half tar that looks finished);
- when every shard is done, the manifest is written into that folder, which then
  replaces `out` whole (distcolor/data/publish.py: an atomic exchange of the two
  folders on Linux), so a rebuild (`--overwrite`) that fails or is killed at any point,
  the publish included, leaves a complete dataset in `out`: the previous one until the
  new one is complete. Hence `out` holds a shard set and nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext, suppress
from pathlib import Path

import PIL
import webdataset as wds
from rich.console import Console
from rich.progress import track

from distcolor import __version__
from distcolor.config import SyntheticConfig
from distcolor.data.catalog import MANIFEST, SHARD_NAME, read_manifest
from distcolor.data.layouts import find_images
from distcolor.data.plan import (
    SPLITS,
    Input,
    Plan,
    ShardJob,
    assign_split,
    make_plan,
    synthetic_inputs,
)
from distcolor.data.publish import needs_recovery, publish, recover, staging_path
from distcolor.data.sources import (
    DEFAULT_MIN_COLORFULNESS,
    Sample,
    Skip,
    load_image_file,
    read_input,
    synthetic_sample,
)
from distcolor.data.workers import guard_worker, process_context
from distcolor.durable import fsync_stream
from distcolor.errors import UserError
from distcolor.locks import folder_lock

__all__ = ["MANIFEST", "assign_split", "build_shards", "ensure_shards", "few_shards_warning"]

FORMAT_VERSION = 2
Log = Callable[[str], None]


# What earlier versions left inside `out`: their staging folder, a manifest being written.
LEGACY_FILES = (".partial", f".{MANIFEST}.tmp")


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


def _recover(out: Path) -> None:
    """What a killed publish left beside `out`, repaired (the caller holds the lock)."""
    try:
        recover(Path(os.path.realpath(out)), _is_complete)
    except OSError as err:
        raise UserError(f"{out}: cannot repair an interrupted build ({err})") from None


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


# -- scanning: which inputs exist, and their content hashes -------------------------------


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


# -- writing one shard ---------------------------------------------------------------------


def _load(item: Input, settings: dict) -> Sample | Skip:
    if item.root is None:  # a synthetic scene
        return synthetic_sample(
            item.index,
            ref=item.ref,
            digest=item.digest,
            size=settings["synthetic_size"],
            seed=settings["synthetic_seed"],
            quality=settings["quality"],
        )
    return load_image_file(
        Path(item.root) / item.ref,
        root=Path(item.root),
        source=item.source,
        size=settings["size"],
        quality=settings["quality"],
        min_colorfulness=settings["min_colorfulness"],
    )


def _write_shard(task: tuple[ShardJob, str]) -> dict:
    """Write one shard atomically into `staging`; returns (and saves) its record."""
    job, staging = task
    staging = Path(staging)
    tmp, final = staging / f"{job.name}.tmp", staging / f"{job.name}.tar"
    count, skipped, colorfulness = 0, [], []
    try:
        with open(tmp, "wb") as stream:
            # mtime fixed: the same inputs give byte-identical shards.
            tar = wds.TarWriter(stream, encoder=False, mtime=0)  # int: a float adds pax headers
            try:
                for item in job.inputs:
                    rec = _load(item, job.settings)
                    if isinstance(rec, Skip):
                        skipped.append({"path": rec.path, "reason": rec.reason, "kind": rec.kind})
                        continue
                    # Keys hold no dots: webdataset splits a member name at its first dot.
                    tar.write(
                        {
                            "__key__": rec.key,
                            "jpg": rec.jpeg,
                            "json": json.dumps(rec.meta, sort_keys=True).encode(),
                        }
                    )
                    count += 1
                    if "colorfulness" in rec.meta:
                        colorfulness.append(rec.meta["colorfulness"])
            except BaseException:
                # Closed here (its last write may fail too), or tarfile flushes it again at
                # exit into a closed file and prints a traceback.
                with suppress(OSError, ValueError):
                    tar.close()
                raise
            tar.close()
            fsync_stream(stream)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and not err.filename:
            raise OSError(err.errno, os.strerror(err.errno), str(staging)) from None
        raise
    os.replace(tmp, final)
    record = {
        "plan": job.digest,
        "file": final.name,
        "split": job.split,
        "source": job.source,
        "count": count,
        "skipped": skipped,
        "colorfulness": colorfulness,
    }
    _write_json(staging / f"{job.name}.json", record)  # last: marks the shard finished
    return record


def _write_json(path: Path, data: dict, **dump_args) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as stream:
        stream.write(json.dumps(data, **dump_args))
        fsync_stream(stream)
    os.replace(tmp, path)


def _finished(staging: Path, jobs: list[ShardJob]) -> dict[str, dict]:
    """Records of the shards an earlier run finished with the same plan; clears the rest."""
    keep: dict[str, dict] = {}
    for job in jobs:
        try:
            record = json.loads((staging / f"{job.name}.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("plan") == job.digest and (staging / f"{job.name}.tar").is_file():
            keep[job.name] = record
    wanted = {f"{name}.{ext}" for name in keep for ext in ("tar", "json")}
    for path in staging.iterdir():
        if path.name in wanted:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()  # half-written, or planned differently: rewrite
    return keep


# -- the manifest and publishing ---------------------------------------------------------


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p5": pick(0.05), "p50": pick(0.5), "p95": pick(0.95)}


def _manifest(
    plan: Plan, records: dict[str, dict], scan_skips: list[Skip], *, header: dict
) -> dict:
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


def _publish(staging: Path, out: Path, manifest: dict) -> None:
    """Write the manifest into `staging` (a complete set from then on), drop the build's
    records, and swap the folder in place of `out`."""
    keep = {shard["file"] for split in SPLITS for shard in manifest["splits"][split]["shards"]}
    try:
        _write_json(staging / MANIFEST, manifest, indent=2)
        for path in staging.iterdir():  # records, and shards whose every input was skipped
            if path.name not in keep | {MANIFEST}:
                path.unlink()
        publish(staging, out)
    except OSError as err:
        raise UserError(f"{out}: could not move the finished shards in place ({err})") from None


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
    real = Path(os.path.realpath(out))  # a link to the set: its parent stages and swaps
    # One writer at a time, from before anything is written (or deleted) to the end.
    writer = folder_lock(out, name=str(out), purpose="a shard build", log=log)
    with writer if lock else nullcontext():
        _recover(out)  # a publish that was killed: put a complete set back
        _check_out(out, overwrite)  # before any work: a long build must not fail at the end

        started = time.perf_counter()
        inputs, scan_skips, warnings = _scan(folders, out=out, workers=workers, log=log)
        if synthetic > 0:
            inputs += synthetic_inputs(synthetic, size=synthetic_size, seed=synthetic_seed)
        settings = {
            "format": FORMAT_VERSION,
            # A shard made by other code may hold other bytes: rebuild rather than reuse it.
            "code": f"distcolor {__version__}, Pillow {PIL.__version__}",
            "size": size,
            "quality": quality,
            "min_colorfulness": min_colorfulness,
            "synthetic_size": synthetic_size,
            "synthetic_seed": synthetic_seed,
        }
        plan = make_plan(
            inputs, shard_size=shard_size, test_fraction=test_fraction, seed=seed, settings=settings
        )

        staging = staging_path(real)
        try:
            staging.mkdir(exist_ok=True)
        except OSError as err:
            raise UserError(f"{out}: cannot write there ({err.strerror or err})") from None
        records = _finished(staging, plan.jobs)
        todo = [job for job in plan.jobs if job.name not in records]
        if records:
            log(f"resuming: {len(records)} of {len(plan.jobs)} shards already written")
        written = _map(_write_shard, [(job, str(staging)) for job in todo], workers, ordered=False)
        for record in _progress(written, len(todo), "writing shards"):
            records[record["file"].removesuffix(".tar")] = record

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
        manifest = _manifest(plan, records, scan_skips, header=header)
        total = sum(manifest["splits"][s]["count"] for s in SPLITS)
        if total == 0:
            shutil.rmtree(staging, ignore_errors=True)  # nothing usable: keep what `out` had
            first = manifest["skipped"][0] if manifest["skipped"] else None
            example = f"; e.g. {first['path']}: {first['reason']}" if first else ""
            raise UserError(
                f"no usable images found ({manifest['skipped_count']} inputs skipped{example})"
            )
        _publish(staging, real, manifest)
        seconds = time.perf_counter() - started
        manifest_inputs = len(inputs) + len(scan_skips)
        log(
            f"sharded {manifest_inputs} inputs in {seconds:.1f} s "
            f"({manifest_inputs / max(seconds, 1e-9):.0f} inputs/s, {workers} worker(s))"
        )
        return manifest


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


def ensure_shards(folder: Path, synthetic: SyntheticConfig | None, *, log=print) -> dict:
    """The manifest of `folder`. With `synthetic` set, a missing or empty folder first gets
    that synthetic dataset; a folder holding anything else is an error naming the key, so a
    typo or a photo folder is never silently filled with (or trained as) synthetic data.
    A build by another process into `folder` is waited for, not duplicated."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"data.shards: {folder} is a file, not a folder")
    if synthetic is None:
        if not folder.exists() and needs_recovery(Path(os.path.realpath(folder))):
            _recover_unless_busy(folder, log)
        return read_manifest(folder)
    want = synthetic.model_dump()
    if not (folder / MANIFEST).is_file():

        def waiting(holder: str) -> None:
            log(f"waiting for {holder} to finish writing {folder}")

        name = f"data.shards {folder}"
        with folder_lock(folder, name=name, purpose="a shard build", wait=True, on_wait=waiting):
            _recover(folder)
            if not (folder / MANIFEST).is_file():  # still none: nobody built it meanwhile
                _build_synthetic(folder, synthetic, log)
    manifest = read_manifest(folder)
    have = manifest.get("settings", {}).get("synthetic")
    if have != want:
        if have is None:
            held = "shards not built from data.synthetic"
        else:
            diff = [f"{k} {have.get(k)} (config: {v})" for k, v in want.items() if have.get(k) != v]
            held = "a synthetic set with " + ", ".join(diff)
        raise UserError(
            f"data.synthetic: {folder} holds {held}; set data.synthetic=null to train on it "
            "as it is, or point data.shards at a new folder"
        )
    return manifest


def _build_synthetic(folder: Path, synthetic: SyntheticConfig, log) -> None:
    """Build `synthetic` into `folder` (whose lock the caller holds) if it is empty."""
    if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise UserError(
            f"data.shards: {folder} is not empty and has no manifest.json; refusing to "
            "build synthetic data into it (use a new folder, or data.synthetic=null)"
        )
    log(f"building synthetic dataset: {synthetic.count} scenes at {synthetic.size} px -> {folder}")
    build_shards(
        folder,
        synthetic=synthetic.count,
        synthetic_size=synthetic.size,
        synthetic_seed=synthetic.seed,
        size=synthetic.size,
        shard_size=synthetic.shard_size,
        test_fraction=synthetic.test_fraction,
        seed=synthetic.seed,
        workers=min(4, os.cpu_count() or 1),
        overwrite=True,
        log=log,
        lock=False,
    )


def _recover_unless_busy(folder: Path, log) -> None:
    """Put back the set a killed publish left beside `folder`, unless a writer is at work
    (it finishes its own publish)."""
    try:
        with folder_lock(folder, name=f"data.shards {folder}", purpose="a recovery", log=log):
            _recover(folder)
    except UserError:
        pass
