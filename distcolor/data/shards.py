"""Writing WebDataset shards: parallel, resumable, atomic; stable split, dedupe, manifest.

Layout written to `out/`: `train-<source>-000000.tar ...`, `test-<source>-000000.tar ...`
(each shard holds one source, so the loader can weight sources) and, last,
`manifest.json`. A folder without a manifest is incomplete (the loader refuses it).

A build works in a hidden folder inside `out`, `.partial/` (same filesystem, so the final
moves are renames):
- each shard is written as `NAME.tmp`, renamed to `NAME.tar` when complete, and then
  gets a `NAME.json` record (its plan digest, counts, skipped inputs): a shard is
  finished only when its record exists and names the same plan;
- a re-run with the same arguments keeps every finished shard and writes the rest, so
  a killed build resumes where it stopped (webdataset's ShardWriter would write
  straight to the final name, leaving a half tar that looks finished);
- only when every shard is done are they moved into `out/` with the manifest, so a
  rebuild (`--overwrite`) that fails or is killed while reading and writing (where
  builds fail: bad inputs, a full disk, a kill) leaves the previous dataset as it was;
  the swap at the end is a few renames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import PIL
import webdataset as wds
from rich.console import Console
from rich.progress import track

from distcolor import __version__
from distcolor.config import SyntheticConfig
from distcolor.data.catalog import MANIFEST, read_manifest
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
from distcolor.data.sources import (
    DEFAULT_MIN_COLORFULNESS,
    Sample,
    Skip,
    load_image_file,
    read_input,
    synthetic_sample,
)
from distcolor.data.workers import process_context
from distcolor.errors import UserError

__all__ = ["MANIFEST", "assign_split", "build_shards", "ensure_shards", "few_shards_warning"]

FORMAT_VERSION = 2
Log = Callable[[str], None]


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder")
    if (out / MANIFEST).exists() and not overwrite:
        raise UserError(f"{out} already holds shards (manifest.json); pass --overwrite to replace")


def _progress(items: Iterable, total: int, what: str) -> Iterable:
    """A rich progress bar on a terminal; plain iteration in log files."""
    return track(items, description=what, total=total, disable=not Console().is_terminal)


def _map(fn: Callable, items: list, workers: int, *, ordered: bool) -> Iterator:
    """`fn` over `items` on `workers` processes (in this process when 1)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with process_context().Pool(min(workers, len(items))) as pool:
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
    with open(tmp, "wb") as stream:
        # mtime fixed: the same inputs give byte-identical shards.
        tar = wds.TarWriter(stream, encoder=False, mtime=0)  # an int: a float adds pax headers
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
        tar.close()
        stream.flush()
        os.fsync(stream.fileno())
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
    tmp.write_text(json.dumps(data, **dump_args))
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
        if path.name not in wanted:
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
    """Swap a finished build into `out`; the previous shards stay until this point."""
    new = {shard["file"] for split in SPLITS for shard in manifest["splits"][split]["shards"]}
    try:
        # Manifest first: if we die half-way the folder reads as incomplete, not as
        # stale-but-valid. Then renames (same filesystem), then the old leftovers go.
        (out / MANIFEST).unlink(missing_ok=True)
        for name in sorted(new):
            os.replace(staging / name, out / name)
        for split in SPLITS:
            for old in out.glob(f"{split}-*.tar"):
                if old.name not in new:
                    old.unlink()
        _write_json(out / MANIFEST, manifest, indent=2)
    except OSError as err:
        raise UserError(f"{out}: could not move the finished shards in place ({err})") from None
    shutil.rmtree(staging, ignore_errors=True)


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
) -> dict:
    """Read every source, write shards + manifest to `out`; UserError if nothing was usable.

    Resumable: shards finished by an interrupted run with the same arguments are kept."""
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

    staging, existed = out / ".partial", out.exists()
    try:
        staging.mkdir(parents=True, exist_ok=True)
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
        if not existed:
            out.rmdir()
        first = manifest["skipped"][0] if manifest["skipped"] else None
        example = f"; e.g. {first['path']}: {first['reason']}" if first else ""
        raise UserError(
            f"no usable images found ({manifest['skipped_count']} inputs skipped{example})"
        )
    _publish(staging, out, manifest)
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
    typo or a photo folder is never silently filled with (or trained as) synthetic data."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"data.shards: {folder} is a file, not a folder")
    if synthetic is None:
        return read_manifest(folder)
    want = synthetic.model_dump()
    if not (folder / MANIFEST).is_file():
        if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
            raise UserError(
                f"data.shards: {folder} is not empty and has no manifest.json; refusing to "
                "build synthetic data into it (use a new folder, or data.synthetic=null)"
            )
        what = f"{synthetic.count} scenes at {synthetic.size} px"
        log(f"building synthetic dataset: {what} -> {folder}")
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
        )
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
