"""Writing one shard of a build into its staging folder, and finding the ones already written.

A shard is written as `NAME.tmp`, renamed to `NAME.tar` when complete, and then gets a
`NAME.json` record (its plan digest, counts, skipped inputs): it is finished only when
its record exists and names the same plan, so a killed build resumes with the shards it
finished and rewrites the rest. `write_shard` runs on the build's pool workers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import suppress
from pathlib import Path

import PIL
import webdataset as wds

from distcolor import __version__
from distcolor.data.plan import Input, ShardJob
from distcolor.data.sources import Sample, Skip, load_image_file, synthetic_sample
from distcolor.durable import fsync_stream

FORMAT_VERSION = 2


def shard_settings(
    *, size: int, quality: int, min_colorfulness: float, synthetic_size: int, synthetic_seed: int
) -> dict:
    """Everything besides its inputs that shapes a shard's bytes (part of each job's digest)."""
    return {
        "format": FORMAT_VERSION,
        # A shard made by other code may hold other bytes: rebuild rather than reuse it.
        "code": f"distcolor {__version__}, Pillow {PIL.__version__}",
        "size": size,
        "quality": quality,
        "min_colorfulness": min_colorfulness,
        "synthetic_size": synthetic_size,
        "synthetic_seed": synthetic_seed,
    }


def load_input(item: Input, settings: dict) -> Sample | Skip:
    """The sample `item` becomes under `settings`, or why it is skipped."""
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


def write_shard(task: tuple[ShardJob, str]) -> dict:
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
                    rec = load_input(item, job.settings)
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
    write_json(staging / f"{job.name}.json", record)  # last: marks the shard finished
    return record


def write_json(path: Path, data: dict, **dump_args) -> None:
    """`data` as JSON at `path`, whole or not at all (written beside it, synced, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as stream:
        stream.write(json.dumps(data, **dump_args))
        fsync_stream(stream)
    os.replace(tmp, path)


def finished_records(staging: Path, jobs: list[ShardJob]) -> dict[str, dict]:
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
