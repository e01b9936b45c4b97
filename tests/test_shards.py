import io
import json
import tarfile

import pytest
from PIL import Image

from distcolor.data.catalog import MANIFEST, read_manifest, shard_list
from distcolor.data.plan import assign_split
from distcolor.data.publish import staging_path
from distcolor.data.shard_build import build_shards
from distcolor.errors import UserError


def read_tar(path):
    """{key: {ext: bytes}} straight from the tar, independent of webdataset."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def save(img, path, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def colour_image(seed, size=(50, 40)):
    img = Image.new("RGB", size, (20 + seed * 7 % 200, 120, 200 - seed * 5 % 150))
    img.putpixel((seed % size[0], 0), (255, 0, 0))
    return img


def test_round_trip_counts_match_manifest(tmp_path):
    out = tmp_path / "s"
    manifest = build_shards(
        out, synthetic=30, synthetic_size=40, size=40, shard_size=7, test_fraction=0.2
    )
    assert manifest == read_manifest(out)
    total = 0
    for split in ("train", "test"):
        shards = shard_list(out, manifest, split)
        assert [s.url.rsplit("/", 1)[1] for s in shards] == [
            f"{split}-synthetic-{i:06d}.tar" for i in range(len(shards))
        ]
        for shard in shards:
            samples = read_tar(shard.url)
            assert len(samples) == shard.count <= 7 and shard.source == "synthetic"
            for key, sample in samples.items():
                meta = json.loads(sample["json"])
                assert "." not in key and key == f"synthetic-{meta['sha256'][:16]}"
                assert meta["source"] == "synthetic" and meta["path"].startswith("scene-")
                assert Image.open(io.BytesIO(sample["jpg"])).size == (40, 40)
                assert assign_split(meta["sha256"], seed=0, test_fraction=0.2) == split
        total += manifest["splits"][split]["count"]
        assert manifest["splits"][split]["count"] == sum(s.count for s in shards)
    assert total == 30
    assert (
        manifest["sources"]["synthetic"]["train"] + manifest["sources"]["synthetic"]["test"] == 30
    )
    assert 0 < manifest["splits"]["test"]["count"] < 15


def test_folder_source_skips_and_counts_bad_inputs(tmp_path):
    src = tmp_path / "photos"
    for i in range(6):
        save(colour_image(i), src / "nested" / f"img{i}.jpg")
    save(colour_image(0), src / "copy_of_img0.jpg")  # exact duplicate content
    save(colour_image(9).convert("RGBA"), src / "alpha.png", "PNG")
    save(Image.new("L", (30, 30), 128), src / "gray.png", "PNG")
    (src / "notes.txt").write_text("not an image")
    (src / "empty.jpg").write_bytes(b"")
    good = io.BytesIO()
    colour_image(3).save(good, format="JPEG")
    (src / "truncated.jpg").write_bytes(good.getvalue()[:200])
    manifest = build_shards(tmp_path / "out", folders=[("photos", src)], size=32, shard_size=4)
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in manifest["skipped"]}
    kinds = {s["path"].rsplit("/", 1)[1]: s["kind"] for s in manifest["skipped"]}
    assert kinds == {
        "notes.txt": "not_image",
        "empty.jpg": "empty",
        "truncated.jpg": "corrupt",
        "gray.png": "grayscale",
    }
    assert manifest["skipped_by_kind"] == {k: 1 for k in kinds.values()}
    assert reasons["notes.txt"] == "not an image"
    assert reasons["empty.jpg"] == "empty file"
    assert "grayscale" in reasons["gray.png"]
    assert manifest["skipped_count"] == 4
    assert manifest["duplicates"] == 1
    assert sum(manifest["splits"][s]["count"] for s in ("train", "test")) == 7  # 6 + alpha


def test_split_is_stable_when_a_source_is_added(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(20):
        save(colour_image(i), a / f"{i}.jpg")
        save(colour_image(100 + i), b / f"{i}.jpg")

    def splits(manifest, out):
        where = {}
        for split in ("train", "test"):
            for shard in shard_list(out, manifest, split):
                for sample in read_tar(shard.url).values():
                    where[json.loads(sample["json"])["sha256"]] = split
        return where

    one = splits(build_shards(tmp_path / "o1", folders=[("a", a)], size=32), tmp_path / "o1")
    two = splits(
        build_shards(tmp_path / "o2", folders=[("a", a), ("b", b)], size=32), tmp_path / "o2"
    )
    assert all(two[h] == s for h, s in one.items())


def test_existing_shards_are_not_overwritten_by_accident(tmp_path):
    build_shards(tmp_path, synthetic=10, synthetic_size=32, size=32)
    with pytest.raises(UserError, match="already holds shards.*--overwrite"):
        build_shards(tmp_path, synthetic=10, synthetic_size=32, size=32)
    build_shards(tmp_path, synthetic=12, synthetic_size=32, size=32, overwrite=True)
    manifest = read_manifest(tmp_path)
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"] == 12


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no usable images found \\(1 inputs skipped"):
        build_shards(tmp_path / "out", folders=[("x", tmp_path / "in")])
    with pytest.raises(UserError, match="folder does not exist"):
        build_shards(tmp_path / "out2", folders=[("x", tmp_path / "missing")])


@pytest.mark.parametrize("state", ["missing", "empty", "incomplete", "lost_shard"])
def test_unusable_shard_folders_name_the_key(tmp_path, state):
    folder = tmp_path / "s"
    if state != "missing":
        folder.mkdir()
    if state == "incomplete":
        (folder / "train-synthetic-000000.tar").write_bytes(b"")
    if state == "lost_shard":
        build_shards(folder, synthetic=10, synthetic_size=32, size=32)
        (folder / "train-synthetic-000000.tar").unlink()
    with pytest.raises(UserError, match="^data.shards: ") as err:
        shard_list(folder, read_manifest(folder), "train")
    assert {
        "missing": "does not exist",
        "empty": "is empty",
        "incomplete": "no manifest.json",
        "lost_shard": "is missing",
    }[state] in str(err.value)
    if state == "incomplete":
        assert not (folder / MANIFEST).exists()


def test_output_folder_inside_a_source_is_not_read_back(tmp_path):
    src = tmp_path / "photos"
    for i in range(4):
        save(colour_image(i), src / f"{i}.jpg")
    build_shards(src / "shards", folders=[("photos", src)], size=32)
    again = build_shards(src / "shards", folders=[("photos", src)], size=32, overwrite=True)
    assert again["skipped_count"] == 0
    assert sum(again["splits"][s]["count"] for s in ("train", "test")) == 4


def test_failed_rebuild_keeps_the_previous_dataset(tmp_path):
    out = tmp_path / "s"
    first = build_shards(out, synthetic=10, synthetic_size=32, size=32)
    with pytest.raises(UserError, match="--source photos=.*typo: folder does not exist"):
        build_shards(out, folders=[("photos", tmp_path / "typo")], overwrite=True)
    empty = tmp_path / "nothing"
    (empty / "a.txt").parent.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no usable images found .*a.txt: not an image"):
        build_shards(out, folders=[("x", empty)], overwrite=True)
    assert read_manifest(out) == first
    assert not (out / ".partial").exists() and not staging_path(out).exists()
    with pytest.raises(UserError, match="is a file, not a folder"):
        build_shards(out / "manifest.json", synthetic=10, synthetic_size=32)


def synthetic_cfg(**kw):
    from distcolor.config import SyntheticConfig

    return SyntheticConfig(**{"count": 12, "size": 32, "shard_size": 4, **kw})


def test_ensure_shards_builds_only_into_a_missing_or_empty_folder(tmp_path):
    from distcolor.data.shards import ensure_shards

    built = ensure_shards(tmp_path / "new", synthetic_cfg(), log=lambda *_: None)
    assert built == ensure_shards(tmp_path / "new", synthetic_cfg())  # reused, not rebuilt
    (tmp_path / "empty").mkdir()
    ensure_shards(tmp_path / "empty", synthetic_cfg(), log=lambda *_: None)
    photos = tmp_path / "photos"
    save(colour_image(1), photos / "1.jpg")
    with pytest.raises(UserError, match="^data.shards: .*photos is not empty and has no manifest"):
        ensure_shards(photos, synthetic_cfg())
    assert sorted(p.name for p in photos.iterdir()) == ["1.jpg"]
    with pytest.raises(UserError, match=r"^data.synthetic: .* count 12 \(config: 20\)"):
        ensure_shards(tmp_path / "new", synthetic_cfg(count=20))
    build_shards(tmp_path / "mine", folders=[("photos", photos)], size=32)
    with pytest.raises(
        UserError, match="holds shards not built from data.synthetic; set data.synthetic=null"
    ):
        ensure_shards(tmp_path / "mine", synthetic_cfg())
    sources = ensure_shards(tmp_path / "mine", None)["sources"]
    assert sources["photos"]["train"] == 1 and sources["photos"]["test"] == 0
    with pytest.raises(UserError, match="^data.shards: .* is a file, not a folder"):
        ensure_shards(photos / "1.jpg", None)
