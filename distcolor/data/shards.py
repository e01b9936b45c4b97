"""Writing WebDataset shards: stable train/test split, exact-duplicate removal, manifest.

Layout written to `out/`: `train-000000.tar ...`, `test-000000.tar ...` and, last,
`manifest.json`. A folder without a manifest is incomplete (the loader refuses it),
so an interrupted build never passes for a finished one. A build is written to a hidden
sibling folder and moved into `out/` only once complete, so the previous shards survive
a failed or interrupted rebuild.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from multiprocessing import Pool
from pathlib import Path

import webdataset as wds

from distcolor import __version__
from distcolor.config import SyntheticConfig
from distcolor.data.sources import Sample, Skip, iter_folder, load_image_file, synthetic_samples
from distcolor.errors import UserError

MANIFEST = "manifest.json"
SPLITS = ("train", "test")
FORMAT_VERSION = 1


def assign_split(digest: str, *, seed: int, test_fraction: float) -> str:
    """'train' or 'test' from the content hash alone, so adding inputs never moves old ones."""
    h = hashlib.sha256(f"{seed}:{digest}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < test_fraction else "train"


class _SplitWriter:
    """Rolls one split's samples into numbered tar shards of `shard_size` samples."""

    def __init__(self, out: Path, split: str, shard_size: int) -> None:
        self.out, self.split, self.shard_size = out, split, shard_size
        self.shards: list[dict] = []
        self._tar: wds.TarWriter | None = None

    def write(self, sample: Sample) -> None:
        if self._tar is None:
            name = f"{self.split}-{len(self.shards):06d}.tar"
            # mtime fixed: the same inputs give byte-identical shards.
            self._tar = wds.TarWriter(str(self.out / name), encoder=False, mtime=0.0)
            self.shards.append({"file": name, "count": 0})
        record = {
            "__key__": sample.key,
            "jpg": sample.jpeg,
            "json": json.dumps(sample.meta, sort_keys=True).encode(),
        }
        self._tar.write(record)
        self.shards[-1]["count"] += 1
        if self.shards[-1]["count"] == self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def close(self) -> dict:
        self._finish_shard()
        return {"count": sum(s["count"] for s in self.shards), "shards": self.shards}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder")
    if (out / MANIFEST).exists() and not overwrite:
        raise UserError(f"{out} already holds shards (manifest.json); pass --overwrite to replace")


def _publish(staging: Path, out: Path, manifest: dict) -> None:
    """Swap a finished build into `out`; the previous shards stay until this point."""
    out.mkdir(parents=True, exist_ok=True)
    # Manifest first: if we die half-way the folder reads as incomplete, not as stale-but-valid.
    (out / MANIFEST).unlink(missing_ok=True)
    for split in SPLITS:
        for old in out.glob(f"{split}-*.tar"):
            old.unlink()
    for new in staging.glob("*.tar"):
        os.replace(new, out / new.name)
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)


def write_shards(
    records: Iterable[Sample | Skip],
    out: Path,
    *,
    shard_size: int,
    test_fraction: float,
    seed: int,
    overwrite: bool = False,
    settings: dict | None = None,
) -> dict:
    """Write every Sample to its split's shards, list every Skip; returns the manifest.

    The build goes to a hidden sibling folder and replaces `out`'s shards only once it is
    complete, so a failed or interrupted build never loses the previous dataset."""
    out = Path(out)
    _check_out(out, overwrite)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted build
    staging.mkdir(parents=True)
    writers = {s: _SplitWriter(staging, s, shard_size) for s in SPLITS}
    seen: set[str] = set()
    per_source: dict[str, Counter] = {}
    skipped: list[dict] = []
    duplicates = 0
    try:
        for rec in records:
            if isinstance(rec, Skip):
                skipped.append({"path": rec.path, "reason": rec.reason})
                continue
            digest = rec.meta["sha256"]
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            split = assign_split(digest, seed=seed, test_fraction=test_fraction)
            writers[split].write(rec)
            per_source.setdefault(rec.meta["source"], Counter())[split] += 1
        splits = {s: w.close() for s, w in writers.items()}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = {
        "format": FORMAT_VERSION,
        "created_by": f"distcolor {__version__}",
        "seed": seed,
        "test_fraction": test_fraction,
        "settings": settings or {},
        "splits": splits,
        "sources": {k: {s: c[s] for s in SPLITS} for k, c in sorted(per_source.items())},
        "duplicates": duplicates,
        "skipped_count": len(skipped),
        "skipped": skipped,
    }
    if sum(split["count"] for split in splits.values()) == 0:
        shutil.rmtree(staging, ignore_errors=True)  # nothing usable: keep what `out` had
        return manifest
    _publish(staging, out, manifest)
    return manifest


def _folder_records(
    name: str, root: Path, *, out: Path, size: int, quality: int, workers: int
) -> Iterator[Sample | Skip]:
    load = functools.partial(load_image_file, root=root, source=name, size=size, quality=quality)
    paths = list(iter_folder(root, exclude=out))
    if workers <= 1:
        yield from map(load, paths)
        return
    with Pool(workers) as pool:
        # imap keeps input order, so the shards are the same whatever the worker count.
        yield from pool.imap(load, paths, chunksize=16)


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
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Read every source, write shards + manifest to `out`; UserError if nothing was usable."""
    if not folders and synthetic <= 0:
        raise UserError("nothing to shard: give --source NAME=DIR and/or --synthetic N")
    for name, root in folders:
        if not name.isidentifier():
            raise UserError(f"--source {name!r}: names are letters, digits and _ only")
        if not Path(root).is_dir():
            raise UserError(f"--source {name}={root}: folder does not exist")
    _check_out(Path(out), overwrite)  # before any work: a long build must not fail at the end

    def records() -> Iterator[Sample | Skip]:
        for name, root in folders:
            yield from _folder_records(
                name, Path(root), out=Path(out), size=size, quality=quality, workers=workers
            )
        if synthetic > 0:
            yield from synthetic_samples(
                synthetic, size=synthetic_size, seed=synthetic_seed, quality=quality
            )

    settings = {"size": size, "quality": quality, "shard_size": shard_size}
    if synthetic > 0 and not folders:
        # Lets the trainer tell whether a folder holds the synthetic set its config asks for.
        settings["synthetic"] = {
            "count": synthetic,
            "size": synthetic_size,
            "seed": synthetic_seed,
            "shard_size": shard_size,
            "test_fraction": test_fraction,
        }
    manifest = write_shards(
        records(),
        Path(out),
        shard_size=shard_size,
        test_fraction=test_fraction,
        seed=seed,
        overwrite=overwrite,
        settings=settings,
    )
    total = sum(manifest["splits"][s]["count"] for s in SPLITS)
    if total == 0:
        first = manifest["skipped"][0] if manifest["skipped"] else None
        example = f"; e.g. {first['path']}: {first['reason']}" if first else ""
        raise UserError(
            f"no usable images found ({manifest['skipped_count']} inputs skipped{example})"
        )
    return manifest


def read_manifest(folder: Path, *, key: str = "data.shards") -> dict:
    """The manifest of a finished shard folder, or a UserError naming `key` and what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{key}: folder {folder} does not exist")
    path = folder / MANIFEST
    if not path.is_file():
        what = "is empty" if not any(folder.iterdir()) else "has no manifest.json (incomplete?)"
        raise UserError(f"{key}: {folder} {what}; build shards with scripts/make_shards.py")
    try:
        manifest = json.loads(path.read_text())
        splits = manifest["splits"]
        for split in SPLITS:
            for shard in splits[split]["shards"]:
                if not (folder / shard["file"]).is_file():
                    raise UserError(
                        f"{key}: {folder / shard['file']} listed in manifest is missing"
                    )
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{key}: {path} is not a distcolor manifest") from None
    return manifest


def shard_list(folder: Path, manifest: dict, split: str) -> list[tuple[str, int]]:
    """[(path, sample count)] of one split's shards, in manifest order."""
    return [
        (str(Path(folder) / s["file"]), s["count"]) for s in manifest["splits"][split]["shards"]
    ]


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
            overwrite=True,
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
