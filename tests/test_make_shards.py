"""make_shards at scale: the four dataset layouts, parallel = serial, resume, atomic shards."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import distcolor.data.shard_build as shard_build
from distcolor.data.catalog import read_manifest
from distcolor.data.publish import staging_path
from distcolor.data.shard_build import build_shards
from distcolor.data.shard_manifest import few_shards_warning

ROOT = Path(__file__).resolve().parents[1]


def photo(path: Path, seed: int, size=(48, 40)) -> None:
    """A small, colourful, unique JPEG."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    pixels = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def dataset_trees(root: Path) -> dict[str, Path]:
    """Small fake trees laid out like each dataset's archive, decoy files included."""
    n = iter(range(1000))
    faces = root / "vggface2"
    for identity in ("n000002", "n000003"):
        for i in range(3):
            photo(faces / "train" / identity / f"{i:04d}_01.jpg", next(n))
    photo(faces / "test" / "n000009" / "0001_01.jpg", next(n))
    (faces / "train_list.txt").write_text("n000002/0000_01.jpg\n")
    flowers = root / "102flowers"
    for i in range(1, 5):
        photo(flowers / "jpg" / f"image_{i:05d}.jpg", next(n))
    (flowers / "imagelabels.mat").write_bytes(b"MATLAB 5.0")
    scenes = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (scenes / "annotations" / split).mkdir(parents=True)
        for i in range(2):
            photo(scenes / "images" / split / f"ADE_{split}_{i:08d}.jpg", next(n))
            mask = Image.fromarray(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(40, 48, 3))
            mask.save(scenes / "annotations" / split / f"ADE_{i:08d}.png")  # colourful decoy
    landscapes = root / "landscapes"
    for i in range(3):
        photo(landscapes / f"{i:08d}.jpg", next(n))
    photo(landscapes / "more" / "x.jpg", next(n))
    return {"faces": faces, "flowers": flowers, "scenes": scenes, "landscapes": landscapes}


def run_make_shards(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_shards.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_reads_each_dataset_layout_and_warns_on_an_unknown_one(tmp_path):
    trees = dataset_trees(tmp_path / "data")
    sources = [f"--source={name}={path}" for name, path in trees.items()]
    result = run_make_shards(
        "--out",
        str(tmp_path / "out"),
        *sources,
        "--size",
        "32",
        "--shard-size",
        "2",
        "--workers",
        "2",
        "--readers",
        "64",
    )
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "out")
    counts = {k: v["train"] + v["test"] for k, v in manifest["sources"].items()}
    assert counts == {"faces": 7, "flowers": 4, "scenes": 4, "landscapes": 4}
    assert manifest["skipped_count"] == 0 and manifest["warnings"] == []  # no decoys read
    assert "fewer than the 64 readers planned" in result.stdout
    for shard in manifest["splits"]["train"]["shards"]:
        assert shard["file"].startswith(f"train-{shard['source']}-")  # one source per shard
    # flowers' layout given as faces: read anyway, every file, with a warning naming it.
    odd = run_make_shards(
        "--out", str(tmp_path / "odd"), f"--source=faces={trees['flowers']}", "--size", "32"
    )
    assert odd.returncode == 0, odd.stderr
    assert "warning: --source faces=" in odd.stdout
    odd_manifest = read_manifest(tmp_path / "odd")
    assert odd_manifest["sources"]["faces"]["train"] + odd_manifest["sources"]["faces"]["test"] == 4
    assert odd_manifest["skipped_by_kind"] == {"not_image": 1}  # imagelabels.mat


def test_user_mistakes_are_one_line(tmp_path):
    for args, message in [
        (["--source", f"x={tmp_path}/nope"], "error: --source x="),
        (["--source", "x.y=."], "error: --source 'x.y': names are"),
        (["--synthetic", "5", "--min-colorfulness", "-1"], "error: --min-colorfulness: invalid"),
    ]:
        result = run_make_shards("--out", str(tmp_path / "o"), *args)
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert "Traceback" not in result.stderr


def test_nearly_colourless_images_are_skipped_and_counted(tmp_path):
    src = tmp_path / "photos"
    for i in range(4):
        photo(src / f"c{i}.jpg", i)
    gray = np.asarray(Image.open(src / "c0.jpg").convert("L"))
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(src / "gray_as_rgb.jpg")
    manifest = build_shards(tmp_path / "o", folders=[("p", src)], size=32)
    assert manifest["skipped_by_kind"] == {"colourless": 1}
    assert manifest["skipped"][0]["path"].endswith("gray_as_rgb.jpg")
    assert manifest["sources"]["p"]["colorfulness"]["p50"] > 10
    kept = build_shards(tmp_path / "o2", folders=[("p", src)], size=32, min_colorfulness=0)
    assert kept["skipped_count"] == 0


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_parallel_build_writes_the_same_bytes_as_serial(tmp_path):
    src = tmp_path / "photos"
    for i in range(30):
        photo(src / f"{i // 10}" / f"{i}.jpg", i)
    common = dict(folders=[("p", src)], synthetic=12, synthetic_size=32, size=32, shard_size=4)
    one = build_shards(tmp_path / "one", workers=1, **common)
    three = build_shards(tmp_path / "three", workers=3, **common)
    assert one == three
    assert tar_bytes(tmp_path / "one") == tar_bytes(tmp_path / "three")
    assert len(tar_bytes(tmp_path / "one")) >= 8


def test_an_interrupted_build_resumes_keeping_finished_shards(tmp_path, monkeypatch):
    src = tmp_path / "photos"
    for i in range(24):
        photo(src / f"{i}.jpg", i)
    args = dict(folders=[("p", src)], size=32, shard_size=3, test_fraction=0.25)
    clean = build_shards(tmp_path / "clean", **args)

    real, written = shard_build.write_shard, []

    def dies_on_the_fourth(task):
        if len(written) == 3:
            raise KeyboardInterrupt  # as if killed
        written.append(task[0].name)
        return real(task)

    monkeypatch.setattr(shard_build, "write_shard", dies_on_the_fourth)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_shards(out, **args)
    staging = staging_path(out)  # .out.partial, beside out
    assert not (out / "manifest.json").exists()
    kept = {name: (staging / f"{name}.tar").stat().st_ino for name in written}
    # A half-written shard and a record of another plan are not taken as finished.
    (staging / "train-p-000009.tmp").write_bytes(b"half a tar")
    record = json.loads((staging / f"{written[0]}.json").read_text())
    (staging / f"{written[0]}.json").write_text(json.dumps({**record, "plan": "other"}))

    monkeypatch.setattr(shard_build, "write_shard", real)
    logs = []
    resumed = build_shards(out, log=logs.append, **args)
    n_jobs = len(clean["splits"]["train"]["shards"]) + len(clean["splits"]["test"]["shards"])
    assert f"resuming: 2 of {n_jobs} shards already written" in logs
    assert {k: v for k, v in resumed.items() if k != "roots"} == {
        k: v for k, v in clean.items() if k != "roots"
    }
    assert tar_bytes(out) == tar_bytes(tmp_path / "clean")
    for name in written[1:]:  # moved, not rewritten
        assert (out / f"{name}.tar").stat().st_ino == kept[name]
    assert not staging.exists()


def test_few_shards_warning():
    manifest = {"splits": {"train": {"shards": [{}] * 6}}}
    assert few_shards_warning(manifest, 6) is None
    assert "has 6 shard(s), fewer than the 16 readers" in few_shards_warning(manifest, 16)
