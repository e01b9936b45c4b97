"""Test helpers: hand-made shard sets (crafted, corrupt or multi-source samples)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import webdataset as wds

from distcolor.data.catalog import FORMAT, MANIFEST, Shard, read_manifest, shard_list
from distcolor.data.sources import Sample, encode_jpeg
from distcolor.data.synthetic import scene_image


def scene_samples(count: int, *, size: int = 40, seed: int = 0, source: str = "synthetic"):
    """`count` synthetic scenes as Samples (keys `<source>-<n>`)."""
    out = []
    for i in range(count):
        jpeg = encode_jpeg(scene_image(i, size=size, seed=seed), size=None, quality=90)
        digest = hashlib.sha256(jpeg).hexdigest()
        out.append(Sample(f"{source}-{i:04d}", jpeg, {"source": source, "sha256": digest}))
    return out


def write_sample_shards(
    folder: Path,
    by_source: dict[str, list[Sample]],
    *,
    shard_size: int | dict[str, int],
    split: str = "train",
) -> list[Shard]:
    """Write each source's samples, in order, into `split` shards (of `shard_size`, or
    `shard_size[source]`) + a manifest; returns the shards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": {"count": 0, "shards": []}, "test": {"count": 0, "shards": []}}
    for source, samples in by_source.items():
        size = shard_size[source] if isinstance(shard_size, dict) else shard_size
        for n, start in enumerate(range(0, len(samples), size)):
            name = f"{split}-{source}-{n:06d}.tar"
            chunk = samples[start : start + size]
            with wds.TarWriter(str(folder / name), encoder=False) as tar:
                for s in chunk:
                    tar.write(
                        {"__key__": s.key, "jpg": s.jpeg, "json": json.dumps(s.meta).encode()}
                    )
            splits[split]["shards"].append({"file": name, "source": source, "count": len(chunk)})
            splits[split]["count"] += len(chunk)
    manifest = {"format": FORMAT, "splits": splits, "sources": {}, "settings": {}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return shard_list(folder, read_manifest(folder), split)


def assert_bitwise_equal(a, b, path="state"):
    """Two (nested) checkpoint states hold exactly the same tensors and values."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


TRAINING_STATE = ("G", "G_ema", "D", "steps")  # weights, averages, optimizers and scalers


def copy_stopped_at(run_dir, copy_dir, *, drop_steps) -> None:
    """`run_dir` as it was before its checkpoints at `drop_steps` existed, copied to
    `copy_dir`: a run stopped earlier, to resume and compare with the straight one."""
    import shutil

    from distcolor.checkpoint import checkpoint_path

    shutil.copytree(run_dir, copy_dir)
    for step in drop_steps:
        shutil.rmtree(checkpoint_path(copy_dir / "checkpoints", step))


def run_script(*args, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python ARGS...` from the checkout (scripts/*.py and their arguments), output captured."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd or root,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port free on loopback now (for a launcher's --master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
