"""Reading a shard set: its manifest, and where each shard is read from.

The manifest (`manifest.json`, a few KB) is always local: it gives every shard's
source and sample count. The tars themselves are read from the manifest's folder, or
from `data.train_urls` / `data.test_urls`: a brace pattern
(`shards/train-faces-{000000..000009}.tar`), a `::`-separated list, or `pipe:` URLs
(`pipe:aws s3 cp s3://bucket/set/train-faces-{000000..000009}.tar -`), so the same
config streams from object storage on a cluster. Each URL must name a shard file of
the manifest; counts and sources come from there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from distcolor.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 2
SHARD_NAME = re.compile(r"(?:train|test)-[A-Za-z_][A-Za-z0-9_]*-\d{6}\.tar")


@dataclass(frozen=True)
class Shard:
    url: str  # a local path or anything webdataset opens (pipe:, http://, ...)
    source: str
    count: int


def read_manifest(folder: Path, *, key: str = "data.shards") -> dict:
    """The manifest of a finished shard folder, or a UserError naming `key` and what is wrong.

    Shard files are checked only when they are local (a folder holding only the manifest
    is fine when the tars are read from URLs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{key}: folder {folder} does not exist")
    path = folder / MANIFEST
    if not path.is_file():
        what = "is empty" if not any(folder.iterdir()) else "has no manifest.json (incomplete?)"
        raise UserError(f"{key}: {folder} {what}; build shards with scripts/make_shards.py")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise UserError(
                f"{key}: {path} was written by another version of make_shards "
                f"(format {manifest.get('format')}, need {FORMAT}); rebuild the shards"
            )
        for split in ("train", "test"):
            for shard in manifest["splits"][split]["shards"]:
                shard["file"], shard["source"], int(shard["count"])  # noqa: B018 (shape check)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{key}: {path} is not a distcolor manifest") from None
    return manifest


def shard_list(
    folder: Path, manifest: dict, split: str, *, urls: str | None = None, key: str = ""
) -> list[Shard]:
    """One split's shards, in manifest order, or in the order `urls` lists them."""
    listed = {s["file"]: s for s in manifest["splits"][split]["shards"]}
    if urls is None:
        shards = [Shard(str(Path(folder) / f), s["source"], s["count"]) for f, s in listed.items()]
        for shard in shards:
            if not Path(shard.url).is_file():
                raise UserError(f"data.shards: {shard.url} listed in manifest is missing")
        return shards
    key = key or f"data.{split}_urls"
    shards = []
    for url in wds.shardlists.expand_urls(urls):
        names = SHARD_NAME.findall(url)
        entry = listed.get(names[-1]) if names else None
        if entry is None:
            raise UserError(f"{key}: {url!r} names no {split} shard of {Path(folder) / MANIFEST}")
        if _is_local(url) and not Path(url).is_file():
            raise UserError(f"{key}: {url} does not exist")
        shards.append(Shard(url, entry["source"], entry["count"]))
    if not shards:
        raise UserError(f"{key}: {urls!r} expands to no shards")
    return shards


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


MAX_UPSCALE = 4
"""data.image_size may be at most this many times the shards' stored size: the loader
resizes every image up to the crop, so beyond a few times the crops are blur, and an
image size far beyond the data (a typo: 100000) would allocate gigabytes per image."""


def stored_size(manifest: dict) -> int | None:
    """The largest shorter side a shard set stores (make_shards --size), or None."""
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    size = settings.get("size") if isinstance(settings, dict) else None
    return size if isinstance(size, int) and size > 0 else None


def check_crop_size(size: int, stored: int | None, *, key: str, shards: Path | str) -> None:
    """UserError when crops of `size` px would upscale the stored images over MAX_UPSCALE x."""
    if stored is None or size <= MAX_UPSCALE * stored:
        return
    raise UserError(
        f"{key}: {size} px crops from shards that store images of at most {stored} px "
        f"({shards}) would upscale each {size / stored:.0f}x (at most {MAX_UPSCALE}x is "
        f"allowed); lower {key} or build the shards larger (make_shards --size)"
    )
