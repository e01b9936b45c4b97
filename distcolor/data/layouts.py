"""Which files of a source folder are its photos, per dataset layout.

The public archives unpack into known layouts that hold more than photos (ADE20K's
segmentation masks are PNG images that must never be trained on; Flowers ships .mat
labels). A known `--source` name takes exactly its dataset's photos; any other name reads
every file under its folder. When a known name's layout is missing (a wrong or parent
folder), every file is read and a warning says so: never a silent guess.

    landscapes  Kaggle "Landscape Pictures": image files anywhere below the folder
    faces       VGGFace2: [train|test/]<identity n000002>/*.jpg
    flowers     Oxford 102 Flowers: [jpg/]image_*.jpg
    scenes      ADE20K: [<dataset>/]images/**/training|validation/**/*.jpg
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}

Parts = tuple[str, ...]  # a file's path relative to the source root, split
_IDENTITY = re.compile(r"n\d+")  # VGGFace2 identity folders: n000002 ...


def _walk(root: Path, exclude: Path | None, errors: list[OSError] | None = None) -> list[Parts]:
    """Every visible file under `root` as relative parts, sorted; hidden entries and
    `exclude` pruned. Follows directory links (a folder of dataset links), once each.
    Folders that cannot be listed are appended to `errors`."""
    excluded = os.path.realpath(exclude) if exclude is not None else None
    seen: set[str] = set()
    files: list[Parts] = []
    stack: list[tuple[str, Parts]] = [(str(root), ())]
    while stack:
        top, rel = stack.pop()
        real = os.path.realpath(top)
        if real in seen or (excluded and os.path.commonpath([real, excluded]) == excluded):
            continue  # a link loop, or the shard output folder
        seen.add(real)
        try:
            # scandir knows file from folder without a stat per file (millions in VGGFace2).
            with os.scandir(top) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():  # follows links
                        stack.append((entry.path, (*rel, entry.name)))
                    elif entry.is_file():  # drops broken links, sockets, fifos
                        files.append((*rel, entry.name))
        except OSError as err:
            if errors is not None:
                errors.append(err)
    return sorted(files)


def iter_folder(root: Path, *, exclude: Path | None = None) -> Iterator[Path]:
    """Every file under `root`, recursively, in a stable (sorted) order; hidden entries and
    anything under `exclude` (the shard output folder, if it sits inside) skipped."""
    for parts in _walk(Path(root), exclude):
        yield Path(root).joinpath(*parts)


def _is_jpg(name: str) -> bool:
    return name.lower().endswith(".jpg")


def _landscapes(files: list[Parts]) -> list[Parts]:
    return [p for p in files if os.path.splitext(p[-1])[1].lower() in IMAGE_SUFFIXES]


def _faces(files: list[Parts]) -> list[Parts]:
    # Root is the dataset (train/ and test/ inside) or one split folder itself. Identity
    # folders must look like VGGFace2's (n000002): any folder of photo folders would match.
    def photo(identity: str, name: str) -> bool:
        return _IDENTITY.fullmatch(identity) is not None and _is_jpg(name)

    dataset = [p for p in files if len(p) == 3 and p[0] in ("train", "test") and photo(*p[1:])]
    return dataset or [p for p in files if len(p) == 2 and photo(*p)]


def _flowers(files: list[Parts]) -> list[Parts]:
    photo = lambda name: fnmatchcase(name, "image_*.jpg")  # noqa: E731
    in_jpg = [p for p in files if len(p) == 2 and p[0] == "jpg" and photo(p[1])]
    return in_jpg or [p for p in files if len(p) == 1 and photo(p[0])]


def _scenes(files: list[Parts]) -> list[Parts]:
    # images/ sits in the root (the dataset folder) or one level down (a parent of it).
    # Photos are the .jpg files under a training/ or validation/ folder below images/;
    # masks (_seg.png, _parts_N.png, annotations/*.png) and .json/.txt are never taken.
    found = []
    for p in files:
        at = 0 if p[0] == "images" else 1 if len(p) > 1 and p[1] == "images" else None
        if at is None or not _is_jpg(p[-1]):
            continue
        if any(d in ("training", "validation") for d in p[at + 1 : -1]):
            found.append(p)
    return found


# name -> (photos of the layout, what the layout looks like, for the warning)
LAYOUTS: dict[str, tuple[Callable[[list[Parts]], list[Parts]], str]] = {
    "landscapes": (_landscapes, "image files"),
    "faces": (_faces, "VGGFace2 layout (train/<identity>/*.jpg)"),
    "flowers": (_flowers, "Oxford 102 Flowers layout (jpg/image_*.jpg)"),
    "scenes": (
        _scenes,
        "ADE20K layout (images/training/*.jpg or images/ADE/training/**/*.jpg)",
    ),
}


def find_images(
    name: str, root: Path, *, exclude: Path | None = None
) -> tuple[list[Path], str | None]:
    """(input files in a stable sorted order, warning or None)."""
    root = Path(root)
    errors: list[OSError] = []
    files = _walk(root, exclude, errors)
    chosen, warnings = files, []
    if name in LAYOUTS:
        select, layout = LAYOUTS[name]
        chosen = select(files)
        if not chosen:
            warnings.append(
                f"--source {name}={root}: no {layout} found; "
                f"reading every file under {root} recursively"
            )
            chosen = files
    if errors:
        first = errors[0]
        warnings.append(
            f"--source {name}={root}: {len(errors)} folder(s) could not be read and were "
            f"left out, e.g. {first.filename}: {first.strerror or first}"
        )
    return [root.joinpath(*p) for p in chosen], "; ".join(warnings) or None
