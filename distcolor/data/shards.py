"""The shard folder a run trains on: its manifest, with the synthetic default built into it
on first use (and a set a killed publish left beside it put back). Building any shard set
is distcolor/data/shard_build.py's job."""

from __future__ import annotations

import os
from pathlib import Path

from distcolor.config import SyntheticConfig
from distcolor.data.catalog import MANIFEST, read_manifest
from distcolor.data.publish import needs_recovery
from distcolor.data.shard_build import build_shards, recover_interrupted
from distcolor.errors import UserError
from distcolor.locks import folder_lock


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
            recover_interrupted(folder)
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
            recover_interrupted(folder)
    except UserError:
        pass
