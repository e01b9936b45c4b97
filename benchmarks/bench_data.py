"""Data-loading throughput with one loader worker: our shards + loader against the usual
map-style Dataset over a folder of full-size JPEGs, and against bare JPEG decoding.

    python benchmarks/bench_data.py [--quick] [--images N] [--seconds S]

Builds its own inputs in a temp dir (photo-like 640x480 JPEGs, quality 90), packs them
with `build_shards` (286 px, quality 95), then measures images/s at 256 px crops, batch 16:

- decode_only: decoding the stored shard JPEGs in this process (the per-core ceiling);
- loader: our training loader end to end, 1 worker;
- baseline: Dataset + DataLoader over the 640x480 files, 1 worker (as most tutorials do).

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tarfile
import tempfile
import time
from collections.abc import Generator, Iterator
from io import BytesIO
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from distcolor.config import DataConfig
from distcolor.data.batching import recycle_batches
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import build_train_loader
from distcolor.data.shard_build import build_shards
from distcolor.data.synthetic import render_scene

CROP, JITTERED, BATCH, WORKERS = 256, 286, 16, 1
ROUNDS = 5  # measurement windows per stream, taken in turns
SMALL_CROP = 112  # jittered to 126 px: a 286-px JPEG decodes at 1/2 scale (143 px)
WIDTH, HEIGHT = 640, 480
TARGETS = {"loader_vs_decode": 0.8, "loader_vs_baseline": 2.0}


# -- inputs --------------------------------------------------------------------------------


def _write_input(job: tuple[int, str]) -> int:
    """One 640x480 photo-like JPEG; returns its size in bytes."""
    seed, path = job
    # Rendered at 480 and upscaled to cover 640x480; the added grain gives the file the
    # entropy of a real photo (flat synthetic regions would decode unrealistically fast).
    scene = render_scene(seed, 480).resize((WIDTH, WIDTH), Image.Resampling.BICUBIC)
    scene = scene.crop((0, (WIDTH - HEIGHT) // 2, WIDTH, (WIDTH + HEIGHT) // 2))
    rng = np.random.default_rng(seed)
    grain = rng.integers(-8, 9, (HEIGHT, WIDTH, 3), np.int16)
    grain += rng.integers(-8, 9, (HEIGHT, WIDTH, 3), np.int16)
    pixels = np.clip(np.asarray(scene, np.int16) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return Path(path).stat().st_size


def make_inputs(folder: Path, count: int) -> list[int]:
    """`count` JPEGs in `folder`, rendered on every core (not part of any measurement)."""
    folder.mkdir(parents=True)
    jobs = [(i, str(folder / f"{i:06d}.jpg")) for i in range(count)]
    with Pool() as pool:
        return pool.map(_write_input, jobs, chunksize=8)


def make_shards(out: Path, folder: Path, count: int) -> float:
    """Packs `folder` into shards in one process; returns images/s."""
    start = time.perf_counter()
    build_shards(
        out,
        folders=[("bench", folder)],
        size=JITTERED,
        quality=95,
        shard_size=max(BATCH, count // 4),  # a few shards, as a real set has
        test_fraction=0.0,
        workers=1,
        min_colorfulness=0,  # every generated scene is kept
        log=lambda _: None,  # the JSON stays the last line, alone
    )
    return count / (time.perf_counter() - start)


def stored_jpegs(shard_dir: Path) -> list[bytes]:
    jpegs = []
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    jpegs.append(tar.extractfile(member).read())
    return jpegs


# -- what is measured ----------------------------------------------------------------------


def _decodes(jpegs: list[bytes]) -> Iterator[int]:
    for data in itertools.cycle(jpegs):
        with Image.open(BytesIO(data)) as image:
            image.load()
            image.convert("RGB")
        yield 1


def _our_loader(shard_dir: Path, *, image_size: int, batch_size: int, workers: int) -> Iterator:
    """distcolor's training loader, consumed as the trainer consumes it."""
    shards = shard_list(shard_dir, read_manifest(shard_dir), "train")
    data = DataConfig(
        image_size=image_size, batch_size=batch_size, num_workers=workers, shuffle_buffer=256
    )
    loader = build_train_loader(shards, data, seed=0, rank=0, world_size=1)
    return recycle_batches(loader)  # as the trainer consumes it


def _batch_len(batch: dict) -> int:
    return batch["gray"].shape[0]


def _our_batches(shard_dir: Path, crop: int = CROP) -> Iterator[int]:
    yield from map(
        _batch_len, _our_loader(shard_dir, image_size=crop, batch_size=BATCH, workers=WORKERS)
    )


class FolderDataset(Dataset):
    """The usual map-style dataset: one full-size file per sample, all work per step."""

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(folder.glob("*.jpg"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(self.paths[index]).convert("RGB")
        scale = JITTERED / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BICUBIC)
        x = np.random.randint(0, image.width - CROP + 1)
        y = np.random.randint(0, image.height - CROP + 1)
        image = image.crop((x, y, x + CROP, y + CROP))
        if np.random.rand() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # np.array, not asarray: PIL's buffer is read-only and torch warns on wrapping it.
        gray = torch.from_numpy(np.array(image.convert("L")))
        return gray, torch.from_numpy(np.array(image))


def _baseline_batches(folder: Path) -> Iterator[int]:
    loader = DataLoader(FolderDataset(folder), batch_size=BATCH, shuffle=True, num_workers=WORKERS)
    while True:  # epochs follow each other, as in training
        for gray, _ in loader:
            yield gray.shape[0]


def rates(
    streams: dict[str, Generator[int, None, None]], *, rounds: int, seconds: float
) -> dict[str, float]:
    """Images/s of each stream, measured in turns: `rounds` windows of `seconds` each,
    so a busy moment on a shared machine hits every stream alike; the median window
    counts. Each window first drops a few items: a paused loader's workers have filled
    their queue, and those batches were not made in the window."""
    windows: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(rounds):
        for name, counts in streams.items():
            for _ in itertools.islice(counts, 2 * BATCH if name == "decode" else 8):
                pass
            images, start = 0, time.perf_counter()
            for n in counts:
                images += n
                if images >= 4 * BATCH and time.perf_counter() - start >= seconds:
                    break
            windows[name].append(images / (time.perf_counter() - start))
    for counts in streams.values():
        counts.close()  # loader workers exit
    return {name: float(np.median(w)) for name, w in windows.items()}


# -- report --------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="under a minute")
    p.add_argument("--images", type=int, help="inputs to build (default 2000, quick 256)")
    p.add_argument("--seconds", type=float, help="per stream, over 5 windows (default 15, quick 3)")
    a = p.parse_args()
    count = a.images or (256 if a.quick else 2000)
    seconds = a.seconds or (3.0 if a.quick else 15.0)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        folder, shard_dir = Path(tmp, "photos"), Path(tmp, "shards")
        sizes_kb = np.array(make_inputs(folder, count)) / 1024
        if not 60 <= sizes_kb.mean() <= 150:
            print(f"warning: inputs average {sizes_kb.mean():.0f} KB", file=sys.stderr)
        make_ips = make_shards(shard_dir, folder, count)
        jpegs = stored_jpegs(shard_dir)
        measured = rates(
            {
                "decode": _decodes(jpegs),
                "loader": _our_batches(shard_dir),
                # 112 px on the same 286-px shards: JPEG draft mode decodes at half scale.
                "loader_small": _our_batches(shard_dir, SMALL_CROP),
                "baseline": _baseline_batches(folder),
            },
            rounds=ROUNDS,
            seconds=seconds / ROUNDS,
        )
    decode, loader, baseline = measured["decode"], measured["loader"], measured["baseline"]
    loader_small = measured["loader_small"]
    ratios = {"loader_vs_decode": loader / decode, "loader_vs_baseline": loader / baseline}
    result = {
        "benchmark": "data",
        "decode_only_ips": round(decode, 1),
        "loader_ips": round(loader, 1),
        "baseline_ips": round(baseline, 1),
        **{k: round(v, 3) for k, v in ratios.items()},
        "make_shards_ips": round(make_ips, 1),
        f"loader_ips_crop{SMALL_CROP}": round(loader_small, 1),
        f"loader_vs_decode_crop{SMALL_CROP}": round(loader_small / decode, 3),
        "targets": {k: {"min": t, "met": ratios[k] >= t} for k, t in TARGETS.items()},
        "images": count,
        "crop": CROP,
        "batch_size": BATCH,
        "workers": WORKERS,
        "seconds_per_measurement": seconds,
        "input_kb_mean": round(float(sizes_kb.mean()), 1),
        "input_kb_range": [round(float(sizes_kb.min()), 1), round(float(sizes_kb.max()), 1)],
        "stored_kb_mean": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
        "quick": a.quick,
        "cpu": f"{cpu_name()}, {torch.get_num_threads()} threads",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
