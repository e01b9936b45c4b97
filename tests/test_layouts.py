"""Dataset layouts: each known source takes exactly its photos, never masks or metadata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from distcolor.data.layouts import find_images, iter_folder
from distcolor.data.sources import iter_folder as iter_folder_from_sources


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 80, 30)).save(path, format="JPEG")
    return path


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (1, 2, 3)).save(path, format="PNG")  # a mask is an image too
    return path


def text(path: Path, content: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def found(name: str, root: Path, **kw) -> list[Path]:
    paths, warning = find_images(name, root, **kw)
    assert warning is None, warning
    return paths


# -- builders: the layouts as the public archives unpack ----------------------------------


def vggface2(root: Path) -> list[Path]:
    photos = [
        jpeg(root / split / ident / name)
        for split, ident, name in [
            ("train", "n000002", "0001_01.jpg"),
            ("train", "n000002", "0002_01.jpg"),
            ("train", "n000003", "0001_01.jpg"),
            ("test", "n000001", "0001_01.jpg"),
        ]
    ]
    text(root / "train_list.txt", "n000002/0001_01.jpg\n")
    text(root / "meta" / "identity_meta.csv", "Class_ID, Name\n")
    text(root / "bb_landmark" / "loose_bb_train.csv")
    jpeg(root / "samples" / "preview.jpg")  # not at identity depth under train/test
    return sorted(photos)


def flowers102(root: Path) -> list[Path]:
    photos = [jpeg(root / "jpg" / f"image_{i:05d}.jpg") for i in (1, 2, 10)]
    text(root / "imagelabels.mat", "MATLAB 5.0 MAT-file")
    text(root / "setid.mat", "MATLAB 5.0 MAT-file")
    text(root / "jpg" / "README.txt")
    jpeg(root / "segmim" / "segmim_00001.jpg")  # 102segmentations.tgz: not photos
    return sorted(photos)


def ade_challenge(root: Path) -> list[Path]:
    photos = [
        jpeg(root / "images" / "training" / "ADE_train_00000001.jpg"),
        jpeg(root / "images" / "training" / "ADE_train_00000002.jpg"),
        jpeg(root / "images" / "validation" / "ADE_val_00000001.jpg"),
    ]
    png(root / "annotations" / "training" / "ADE_train_00000001.png")
    png(root / "annotations" / "validation" / "ADE_val_00000001.png")
    text(root / "objectInfo150.txt")
    text(root / "sceneCategories.txt")
    return sorted(photos)


def ade_2021(root: Path) -> list[Path]:
    photos = []
    for split, cat, scene, stem in [
        ("training", "urban", "street", "ADE_train_00000001"),
        ("training", "home_or_hotel", "bathroom", "ADE_train_00000002"),
        ("validation", "urban", "street", "ADE_val_00000001"),
    ]:
        folder = root / "images" / "ADE" / split / cat / scene
        photos.append(jpeg(folder / f"{stem}.jpg"))
        png(folder / f"{stem}_seg.png")
        png(folder / f"{stem}_parts_1.png")
        text(folder / f"{stem}.json", "{}")
        text(folder / f"{stem}.txt")
        png(folder / stem / f"instance_000_{stem}.png")
    text(root / "objects.txt")
    text(root / "index_ade20k.pkl")
    return sorted(photos)


# -- each layout, from each accepted root -------------------------------------------------


def test_faces_dataset_root_takes_train_and_test_identity_photos(tmp_path):
    photos = vggface2(tmp_path / "vggface2")
    assert found("faces", tmp_path / "vggface2") == photos


def test_faces_split_folder_as_root(tmp_path):
    photos = vggface2(tmp_path / "vggface2")
    train = [p for p in photos if "train" in p.parts]
    assert found("faces", tmp_path / "vggface2" / "train") == train


def test_flowers_dataset_root_and_jpg_folder(tmp_path):
    photos = flowers102(tmp_path / "flowers")
    assert found("flowers", tmp_path / "flowers") == photos
    assert found("flowers", tmp_path / "flowers" / "jpg") == photos


@pytest.mark.parametrize("build", [ade_challenge, ade_2021])
def test_scenes_dataset_root_and_parent(tmp_path, build):
    photos = build(tmp_path / "parent" / "ADE")
    text(tmp_path / "parent" / "notes.txt")
    assert found("scenes", tmp_path / "parent" / "ADE") == photos
    assert found("scenes", tmp_path / "parent") == photos


def test_scenes_takes_no_mask_even_when_named_jpg_elsewhere(tmp_path):
    photos = ade_challenge(tmp_path)
    jpeg(tmp_path / "images" / "testing" / "ADE_test_00000001.jpg")  # neither split
    assert found("scenes", tmp_path) == photos


def test_landscapes_takes_images_anywhere(tmp_path):
    photos = [jpeg(tmp_path / "00000001.jpg"), jpeg(tmp_path / "more" / "00000002.jpg")]
    photos.append(png(tmp_path / "more" / "sunset.png"))
    text(tmp_path / "LICENSE.txt")
    assert found("landscapes", tmp_path) == sorted(photos)


def test_unknown_name_reads_every_file(tmp_path):
    files = [jpeg(tmp_path / "a.jpg"), text(tmp_path / "sub" / "notes.txt")]
    assert found("holiday", tmp_path) == sorted(files)


# -- wrong layouts warn and read everything; hidden and excluded folders never read -------


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("faces", "VGGFace2"),
        ("flowers", "Oxford 102 Flowers"),
        ("scenes", "ADE20K"),
        ("landscapes", "image files"),
    ],
)
def test_missing_layout_warns_and_reads_every_file(tmp_path, name, layout):
    files = [text(tmp_path / "deep" / "er" / "readme.txt"), text(tmp_path / "data.mat")]
    if name != "landscapes":
        files.append(jpeg(tmp_path / "deep" / "er" / "still" / "photo.jpg"))
    paths, warning = find_images(name, tmp_path)
    assert paths == sorted(files)
    assert warning is not None
    assert f"--source {name}={tmp_path}" in warning and layout in warning
    assert "every file" in warning


def test_faces_needs_vggface2_identity_folders(tmp_path):
    flowers102(tmp_path)  # jpg/image_*.jpg: a folder of photos, but no identity
    paths, warning = find_images("faces", tmp_path)
    assert warning and "VGGFace2" in warning
    jpeg(tmp_path / "train" / "holiday" / "0001.jpg")
    assert find_images("faces", tmp_path)[1] == warning


def test_faces_parent_folder_is_not_guessed(tmp_path):
    photos = vggface2(tmp_path / "data" / "vggface2")
    paths, warning = find_images("faces", tmp_path / "data")
    assert warning and "VGGFace2" in warning
    assert set(photos) <= set(paths)  # still read, with the warning


# Where a shard output folder and hidden entries would be taken if they were not skipped.
DECOYS = {
    "faces": ["train/n999999/0001_01.jpg", "train/.n000007/01.jpg", "test/n000001/.02_01.jpg"],
    "flowers": ["shards/image_00001.jpg", "jpg/.image_00099.jpg", ".jpg/image_00001.jpg"],
    "scenes": ["images/ADE/training/out/x.jpg", "images/ADE/training/.thumbs/x.jpg"],
    "landscapes": ["out/a.jpg", ".thumbnails/a.jpg", ".a.jpg"],
    "other": ["out/a.jpg", ".git/config.jpg", ".DS_Store"],
}
BUILDERS = {
    "faces": vggface2,
    "flowers": flowers102,
    "scenes": ade_2021,
    "landscapes": lambda root: [jpeg(root / "a.jpg")],
    "other": lambda root: [jpeg(root / "a.jpg"), text(root / "notes.txt")],
}


@pytest.mark.parametrize("name", list(DECOYS))
def test_hidden_entries_and_exclude_are_never_read(tmp_path, name):
    photos = BUILDERS[name](tmp_path)
    if name == "other":
        photos = sorted(p for p in tmp_path.rglob("*") if p.is_file())  # every file
    exclude = tmp_path / DECOYS[name][0].rsplit("/", 1)[0]
    for decoy in DECOYS[name]:
        jpeg(tmp_path / decoy)
    assert found(name, tmp_path, exclude=exclude) == photos


def test_exclude_outside_root_and_not_yet_existing_is_fine(tmp_path):
    photos = flowers102(tmp_path / "src")
    assert found("flowers", tmp_path / "src", exclude=tmp_path / "shards") == photos


def test_linked_folders_are_followed_once(tmp_path):
    photos = flowers102(tmp_path / "real")
    (tmp_path / "view").mkdir()
    os.symlink(tmp_path / "real" / "jpg", tmp_path / "view" / "jpg")
    os.symlink(tmp_path / "view", tmp_path / "view" / "jpg" / "loop")  # must not hang
    names = [p.name for p in found("flowers", tmp_path / "view")]
    assert names == [p.name for p in photos]


def test_iter_folder_still_walks_every_visible_file(tmp_path):
    files = sorted([jpeg(tmp_path / "b" / "x.jpg"), text(tmp_path / "a.txt")])
    text(tmp_path / ".hidden" / "y.txt")
    text(tmp_path / "out" / "z.txt")
    assert list(iter_folder(tmp_path, exclude=tmp_path / "out")) == files
    assert iter_folder_from_sources is iter_folder


def test_unlistable_folder_is_reported_not_silently_dropped(tmp_path, monkeypatch):
    photos = [jpeg(tmp_path / "a.jpg")]
    jpeg(tmp_path / "locked" / "b.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("distcolor.data.layouts.os.scandir", scandir)
    paths, warning = find_images("landscapes", tmp_path)
    assert paths == photos
    assert warning is not None and "1 folder(s) could not be read" in warning
    assert "locked: Permission denied" in warning
