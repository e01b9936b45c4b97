"""Reading one image file: colour management, odd modes, the colourfulness filter, skips."""

from __future__ import annotations

import io
import itertools
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from distcolor.data.sources import (
    DEFAULT_MIN_COLORFULNESS,
    SKIP_KINDS,
    Sample,
    Skip,
    colorfulness,
    load_image_file,
    resize_shorter,
)
from tests.icc_profiles import (
    adobe_rgb_profile,
    adobe_rgb_to_srgb,
    cmyk_profile,
    lab_to_srgb,
    srgb_encode,
)

BLOCK = 16  # one JPEG MCU: solid blocks survive re-encoding to within a level


def load(path: Path, **kw) -> Sample | Skip:
    args = {"root": path.parent, "source": "test", "size": None, "quality": 100}
    return load_image_file(path, **(args | kw))


def pixels(sample: Sample) -> np.ndarray:
    assert isinstance(sample, Sample), sample
    return np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("RGB"), dtype=np.int16)


def blocks(colours: list, mode: str = "RGB") -> Image.Image:
    """A row of BLOCK x BLOCK solid squares, one per colour."""
    img = Image.new(mode, (BLOCK * len(colours), BLOCK))
    for i, colour in enumerate(colours):
        img.paste(tuple(colour), (i * BLOCK, 0, (i + 1) * BLOCK, BLOCK))
    return img


def block_centres(arr: np.ndarray, n: int) -> np.ndarray:
    return np.array([arr[BLOCK // 2, i * BLOCK + BLOCK // 2] for i in range(n)])


def save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, format=fmt, **kw)
    return path


# -- colourfulness ------------------------------------------------------------------------


def test_colorfulness_of_constant_images_is_the_mean_term_only():
    # rg = 200 - 100 = 100, yb = (200 + 100) / 2 - 50 = 100; no spread.
    assert colorfulness(Image.new("RGB", (7, 5), (200, 100, 50))) == pytest.approx(
        0.3 * math.hypot(100, 100)
    )
    # rg = 0, yb = 0 - 255
    assert colorfulness(np.full((3, 4, 3), (0, 0, 255), np.uint8)) == pytest.approx(0.3 * 255)


@pytest.mark.parametrize("value", [0, 77, 255])
def test_colorfulness_of_gray_is_zero(value):
    assert colorfulness(Image.new("RGB", (9, 9), (value,) * 3)) == 0.0
    assert colorfulness(Image.new("L", (9, 9), value)) == 0.0  # other modes as RGB


def test_colorfulness_of_a_two_colour_image():
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[:2] = (255, 0, 0)  # rg 255, yb 127.5
    arr[2:] = (0, 0, 255)  # rg 0, yb -255
    # Half and half: mean = midpoint, (population) std = half the difference.
    mean_rg, std_rg = 127.5, 127.5
    mean_yb, std_yb = (127.5 - 255) / 2, (127.5 + 255) / 2
    expected = math.sqrt(std_rg**2 + std_yb**2) + 0.3 * math.sqrt(mean_rg**2 + mean_yb**2)
    assert colorfulness(arr) == pytest.approx(expected)
    assert colorfulness(Image.fromarray(arr)) == pytest.approx(expected)


def test_colorfulness_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="HxWx3"):
        colorfulness(np.zeros((4, 4), np.uint8))


# -- ICC colour management ----------------------------------------------------------------

# In sRGB's gamut once converted (checked below), so no clipping muddies the comparison.
ADOBE_COLOURS = [
    (200, 100, 50),
    (100, 150, 200),
    (128, 128, 128),
    (230, 200, 180),
    (90, 130, 60),
    (60, 60, 140),
    (255, 255, 255),
    (0, 0, 0),
]


def test_hand_built_profiles_parse():
    rgb = ImageCms.ImageCmsProfile(io.BytesIO(adobe_rgb_profile()))
    assert rgb.profile.profile_description == "Test Adobe RGB (1998)"
    assert rgb.profile.xcolor_space.strip() == "RGB"
    cmyk = ImageCms.ImageCmsProfile(io.BytesIO(cmyk_profile(CMYK_CORNERS)))
    assert cmyk.profile.xcolor_space.strip() == "CMYK"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_adobe_rgb_is_converted_to_srgb(tmp_path, fmt):
    extra = {"quality": 95} if fmt == "JPEG" else {}
    path = tmp_path / f"adobe.{fmt.lower()}"
    save(blocks(ADOBE_COLOURS), path, fmt, icc_profile=adobe_rgb_profile(), **extra)
    sample = load(path, min_colorfulness=0)
    got = block_centres(pixels(sample), len(ADOBE_COLOURS))
    linear = adobe_rgb_to_srgb(np.array(ADOBE_COLOURS))
    assert linear.min() > -0.01 and linear.max() < 1.01  # in gamut: a fair comparison
    expected = srgb_encode(linear)
    tolerance = 3 if fmt == "PNG" else 5  # JPEG: two lossy encodings
    assert np.abs(got - expected).max() <= tolerance, (got, expected.round())
    # Not the unconverted values: the test fails if conversion is skipped.
    assert np.abs(got - np.array(ADOBE_COLOURS)).max() > 20
    assert sample.meta["icc"] == "Test Adobe RGB (1998)"


def test_srgb_profile_leaves_pixels_alone(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = save(blocks(ADOBE_COLOURS), tmp_path / "srgb.png", "PNG", icc_profile=srgb)
    sample = load(path, min_colorfulness=0)
    got = block_centres(pixels(sample), len(ADOBE_COLOURS))
    assert np.abs(got - np.array(ADOBE_COLOURS)).max() <= 2
    assert "icc" not in sample.meta  # nothing was converted


def test_rgba_png_with_profile_is_flattened_then_converted(tmp_path):
    img = blocks([(100, 150, 200, 255), (100, 150, 200, 0)], "RGBA")
    path = save(img, tmp_path / "a.png", "PNG", icc_profile=adobe_rgb_profile())
    got = block_centres(pixels(load(path, min_colorfulness=0)), 2)
    expected = srgb_encode(adobe_rgb_to_srgb(np.array([(100, 150, 200)])))[0]
    assert np.abs(got[0] - expected).max() <= 3
    assert (got[1] >= 253).all()  # transparent: white in any profile


@pytest.mark.parametrize(
    ("profile", "words"),
    [
        (b"not an ICC profile at all", "cannot be applied"),
        (b"\0" * 200, "cannot be applied"),
        ("cmyk", "cannot be applied (RGB)"),  # a CMYK profile in an RGB image
    ],
)
def test_unusable_profile_is_skipped(tmp_path, profile, words):
    if profile == "cmyk":
        profile = cmyk_profile(CMYK_CORNERS)
    path = save(blocks([(200, 100, 50)]), tmp_path / "bad.png", "PNG", icc_profile=profile)
    skip = load(path)
    assert isinstance(skip, Skip) and skip.kind == "icc"
    assert "ICC" in skip.reason and words in skip.reason


# Paper white and rich black at the ends (so black point compensation changes nothing);
# each single ink a typical printed colour, far from Pillow's naive (0, 255, 255) etc.
CMYK_CORNERS = {
    corner: (max(0.0, 100 - 30 * sum(corner[:3]) - 60 * corner[3]), 0.0, 0.0)
    for corner in itertools.product((0, 1), repeat=4)
}
CMYK_CORNERS |= {
    (0, 0, 0, 0): (100.0, 0.0, 0.0),
    (1, 0, 0, 0): (60.0, -30.0, -40.0),
    (0, 1, 0, 0): (50.0, 60.0, -5.0),
    (0, 0, 1, 0): (88.0, -5.0, 75.0),
    (1, 1, 0, 0): (30.0, 15.0, -45.0),
    (1, 1, 1, 1): (0.0, 0.0, 0.0),
}
INKS = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (1, 1, 0, 0), (0, 0, 0, 1)]


def cmyk_blocks() -> Image.Image:
    return blocks([tuple(255 * v for v in ink) for ink in INKS], "CMYK")


def test_cmyk_jpeg_with_profile_is_converted_by_its_profile(tmp_path):
    profile = cmyk_profile(CMYK_CORNERS, "Test CMYK press")
    path = save(cmyk_blocks(), tmp_path / "press.jpg", "JPEG", quality=100, icc_profile=profile)
    assert Image.open(path).mode == "CMYK"
    sample = load(path, min_colorfulness=0)
    got = block_centres(pixels(sample), len(INKS))
    expected = srgb_encode(lab_to_srgb(np.array([CMYK_CORNERS[ink] for ink in INKS])))
    assert np.abs(got - expected).max() <= 4, (got, expected.round())
    naive = block_centres(np.asarray(cmyk_blocks().convert("RGB"), np.int16), len(INKS))
    assert np.abs(got - naive).max() > 40
    assert sample.meta["icc"] == "Test CMYK press"


def test_cmyk_jpeg_without_profile_uses_the_naive_conversion(tmp_path):
    path = save(cmyk_blocks(), tmp_path / "plain.jpg", "JPEG", quality=100)
    sample = load(path, min_colorfulness=0)
    got = block_centres(pixels(sample), len(INKS))
    naive = block_centres(np.asarray(Image.open(path).convert("RGB"), np.int16), len(INKS))
    assert np.abs(got - naive).max() <= 2
    assert got[1].tolist() == pytest.approx([0, 255, 255], abs=3)  # cyan ink: cyan
    assert "icc" not in sample.meta


# -- modes ----------------------------------------------------------------------------------


def test_palette_image_without_transparency(tmp_path):
    img = blocks([(200, 30, 40), (20, 90, 220)]).quantize(colors=4)
    assert img.mode == "P" and "transparency" not in img.info
    got = block_centres(pixels(load(save(img, tmp_path / "p.png", "PNG"))), 2)
    assert np.abs(got - [(200, 30, 40), (20, 90, 220)]).max() <= 3


def test_palette_image_with_transparency_is_composited_on_white(tmp_path):
    img = blocks([(200, 30, 40), (20, 90, 220)]).quantize(colors=4)
    hidden = img.getpixel((BLOCK + 1, 1))  # the blue block's palette index
    path = save(img, tmp_path / "p.png", "PNG", transparency=hidden)
    assert Image.open(path).info.get("transparency") == hidden
    got = block_centres(pixels(load(path)), 2)
    assert np.abs(got - [(200, 30, 40), (255, 255, 255)]).max() <= 3


def test_rgba_is_composited_on_white(tmp_path):
    img = blocks([(200, 30, 40, 255), (20, 90, 220, 0), (0, 0, 0, 128)], "RGBA")
    got = block_centres(pixels(load(save(img, tmp_path / "a.png", "PNG"))), 3)
    assert np.abs(got - [(200, 30, 40), (255, 255, 255), (127, 127, 127)]).max() <= 3


def png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    height, width, _ = arr.shape
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bit, truecolour
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_16_bit_rgb_png_keeps_its_colour(tmp_path):
    arr = np.zeros((BLOCK, 2 * BLOCK, 3), np.uint16)
    arr[:, :BLOCK] = (0xC8FF, 0x6400, 0x3210)  # 8-bit (200, 100, 50)
    arr[:, BLOCK:] = (0x1400, 0x5A00, 0xDC80)  # 8-bit (20, 90, 220)
    path = tmp_path / "deep.png"
    path.write_bytes(png16_rgb(arr))
    got = block_centres(pixels(load(path)), 2)
    assert np.abs(got - [(200, 100, 50), (20, 90, 220)]).max() <= 3


@pytest.mark.parametrize(
    ("img", "mode"),
    [
        (Image.fromarray(np.full((8, 8), 40000, np.uint16)), "I;16"),
        (Image.new("LA", (8, 8), (90, 200)), "LA"),
        (Image.new("L", (8, 8), 90), "L"),
        (Image.new("1", (8, 8), 1), "1"),
    ],
)
def test_grayscale_modes_are_skipped(tmp_path, img, mode):
    path = save(img, tmp_path / "g.png", "PNG")
    assert Image.open(path).mode == mode
    skip = load(path)
    assert isinstance(skip, Skip) and skip.kind == "grayscale"
    assert f"grayscale image (mode {mode})" in skip.reason


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (64, 32), (220, 20, 20))  # left half red, right half blue
    img.paste((20, 20, 220), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(img, tmp_path / "phone.jpg", "JPEG", quality=100, exif=exif.tobytes())
    sample = load(path)
    arr = pixels(sample)
    assert arr.shape[:2] == (64, 32)  # height 64, width 32: swapped
    # Turned clockwise, the left (red) half is now on top.
    assert np.abs(arr[16, 16] - (220, 20, 20)).max() <= 3
    assert np.abs(arr[48, 16] - (20, 20, 220)).max() <= 3
    assert sample.meta["original_size"] == [64, 32]  # as stored in the file


# -- the colourfulness filter ---------------------------------------------------------------


def gray_as_rgb_photo() -> Image.Image:
    gray = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    return Image.fromarray(gray).convert("RGB")


def test_grayscale_as_rgb_jpeg_is_skipped_as_colourless(tmp_path):
    path = save(gray_as_rgb_photo(), tmp_path / "bw.jpg", "JPEG")
    skip = load(path)
    assert isinstance(skip, Skip) and skip.kind == "colourless"
    assert skip.reason.startswith("nearly colourless (colourfulness 0.0 < 10")
    assert "--min-colorfulness" in skip.reason


def test_min_colorfulness_zero_keeps_grayscale_as_rgb(tmp_path):
    path = save(gray_as_rgb_photo(), tmp_path / "bw.jpg", "JPEG")
    sample = load(path, min_colorfulness=0)
    assert isinstance(sample, Sample)
    assert sample.meta["colorfulness"] == pytest.approx(0, abs=0.5)


def test_filter_threshold_and_reason(tmp_path):
    # Constant (110, 100, 100): rg 10, yb 5 -> M = 0.3 * hypot(10, 5) = 3.35
    path = save(Image.new("RGB", (16, 16), (110, 100, 100)), tmp_path / "tint.png", "PNG")
    skip = load(path, min_colorfulness=3.5)
    assert isinstance(skip, Skip)
    assert skip.reason == "nearly colourless (colourfulness 3.4 < 3.5, --min-colorfulness)"
    kept = load(path, min_colorfulness=3.3)
    assert isinstance(kept, Sample) and kept.meta["colorfulness"] == 3.35


def test_colorfulness_is_measured_on_the_stored_size(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    path = save(img, tmp_path / "noise.png", "PNG")
    sample = load(path, size=60)
    expected = colorfulness(resize_shorter(img, 60))
    assert sample.meta["colorfulness"] == round(expected, 2)
    assert expected < colorfulness(img) - 5  # resizing averages noise out: a real difference
    assert Image.open(io.BytesIO(sample.jpeg)).size == (80, 60)


def test_default_threshold_keeps_a_muted_colour_photo(tmp_path):
    # A dim, bluish night-sky-like image (around colourfulness 12, like the Hubble photo).
    rng = np.random.default_rng(1)
    base = rng.normal(40, 12, (64, 64, 1))
    arr = np.clip(base + [0, 4, 24] + rng.normal(0, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    value = colorfulness(arr)
    assert DEFAULT_MIN_COLORFULNESS < value < 15
    assert isinstance(load(save(Image.fromarray(arr), tmp_path / "sky.png", "PNG")), Sample)


# -- skips and their kinds -----------------------------------------------------------------


def test_skip_kind_defaults_for_positional_callers():
    assert Skip("p", "why") == Skip("p", "why", "other")
    assert set(SKIP_KINDS) == {
        "unreadable",
        "empty",
        "not_image",
        "corrupt",
        "bomb",
        "grayscale",
        "colourless",
        "icc",
    }


def test_every_bad_input_has_its_kind(tmp_path, monkeypatch):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(good, format="JPEG")
    (tmp_path / "missing.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a dangling link
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    save(Image.new("RGB", (64, 64), (200, 40, 40)), tmp_path / "huge.png", "PNG")
    save(Image.new("L", (8, 8), 9), tmp_path / "gray.png", "PNG")
    save(gray_as_rgb_photo(), tmp_path / "bw.jpg", "JPEG")
    save(blocks([(1, 2, 3)]), tmp_path / "icc.png", "PNG", icc_profile=b"junk")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # only 64 x 64 > 2x: a bomb
    kinds = {}
    for name in [
        "missing.jpg",
        "empty.jpg",
        "notes.jpg",
        "truncated.jpg",
        "huge.png",
        "gray.png",
        "bw.jpg",
        "icc.png",
    ]:
        result = load(tmp_path / name)
        assert isinstance(result, Skip), name
        assert result.path == str(tmp_path / name)
        kinds[name] = (result.kind, result.reason)
    assert {name: kind for name, (kind, _) in kinds.items()} == {
        "missing.jpg": "unreadable",
        "empty.jpg": "empty",
        "notes.jpg": "not_image",
        "truncated.jpg": "corrupt",
        "huge.png": "bomb",
        "gray.png": "grayscale",
        "bw.jpg": "colourless",
        "icc.png": "icc",
    }
    assert kinds["missing.jpg"][1].startswith("unreadable file:")
    assert kinds["empty.jpg"][1] == "empty file"
    assert kinds["notes.jpg"][1] == "not an image"
    assert kinds["truncated.jpg"][1].startswith("corrupt or truncated image:")
    assert kinds["huge.png"][1] == "decompression bomb (too many pixels)"


def test_a_good_file_gives_its_metadata(tmp_path):
    src = tmp_path / "photos" / "sub"
    src.mkdir(parents=True)
    path = save(Image.new("RGB", (50, 40), (200, 100, 50)), src / "x.jpg", "JPEG")
    sample = load_image_file(path, root=tmp_path / "photos", source="mine", size=20, quality=90)
    assert isinstance(sample, Sample)
    assert sample.key.startswith("mine-") and len(sample.key) == len("mine-") + 16
    assert sample.meta["path"] == "sub/x.jpg" and sample.meta["source"] == "mine"
    assert sample.meta["original_size"] == [50, 40]
    assert sample.meta["colorfulness"] == pytest.approx(0.3 * math.hypot(100, 100), abs=2)
    assert Image.open(io.BytesIO(sample.jpeg)).size == (25, 20)
