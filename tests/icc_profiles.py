"""Hand-built ICC v2 profiles for tests (no .icc files ship with the test machine).

`adobe_rgb_profile()` is a matrix/TRC display profile with the published Adobe RGB (1998)
colorants; `cmyk_profile(corners)` is a CMYK printer profile whose A2B0 lookup table maps
each ink corner (every ink 0 or 100%) to a chosen CIE Lab colour. The numpy references
below convert independently of littleCMS, so tests can check what Pillow's ImageCms does.
"""

from __future__ import annotations

import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
# Adobe RGB (1998) colorants adapted to D50 (as in Adobe's own profile) and its gamma.
ADOBE_RGB_COLORANTS = {
    "r": (0.6097, 0.3111, 0.0195),
    "g": (0.2053, 0.6257, 0.0609),
    "b": (0.1492, 0.0632, 0.7446),
}
ADOBE_RGB_GAMMA = 563 / 256  # stored as u8Fixed8Number, exactly this value

# XYZ (D50) -> linear sRGB: the sRGB primaries Bradford-adapted to D50 (Lindbloom).
XYZ_D50_TO_SRGB = np.array(
    [
        [3.1338561, -1.6168667, -0.4906146],
        [-0.9787684, 1.9161415, 0.0334540],
        [0.0719453, -0.2289914, 1.4052427],
    ]
)


# -- encoding ---------------------------------------------------------------------------


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_number(xyz: tuple[float, float, float]) -> bytes:
    return b"".join(_s15f16(v) for v in xyz)


def _xyz_tag(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + _xyz_number(xyz)


def _curve_tag(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    # ASCII part, then empty Unicode and ScriptCode parts (the latter is a fixed 67 bytes).
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)


def _text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii") + b"\0"


def _profile(device_class: bytes, colour_space: bytes, pcs: bytes, tags: list) -> bytes:
    """Header + tag table + tag data, each tag 4-byte aligned."""
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, data = [], b""
    for signature, body in tags:
        pad = (-len(data)) % 4
        data += bytes(pad)
        entries.append(struct.pack(">4sII", signature, offset + len(data), len(body)))
        data += body
    data += bytes((-len(data)) % 4)
    size = 128 + table_size + len(data)
    header = (
        struct.pack(">I", size)
        + bytes(4)  # preferred CMM
        + struct.pack(">I", 0x02100000)  # version 2.1
        + device_class
        + colour_space
        + pcs
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8)  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # rendering intent: perceptual
        + _xyz_number(D50)
        + bytes(4 + 16 + 28)  # creator, profile ID (v4 only), reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + data


def adobe_rgb_profile(description: str = "Test Adobe RGB (1998)") -> bytes:
    """An ICC v2 RGB display profile with Adobe RGB (1998)'s colorants and gamma."""
    curve = _curve_tag(ADOBE_RGB_GAMMA)
    tags = [
        (b"desc", _desc_tag(description)),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(ADOBE_RGB_COLORANTS["r"])),
        (b"gXYZ", _xyz_tag(ADOBE_RGB_COLORANTS["g"])),
        (b"bXYZ", _xyz_tag(ADOBE_RGB_COLORANTS["b"])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", _text_tag("No copyright, test data")),
    ]
    return _profile(b"mntr", b"RGB ", b"XYZ ", tags)


def _lab16(lab: tuple[float, float, float]) -> tuple[int, int, int]:
    """Lab in the ICC v2 16-bit (lut16) encoding: L 0..100 -> 0..0xFF00, a/b +128 * 256."""
    L, a, b = lab
    return round(L * 0xFF00 / 100), round((a + 128) * 256), round((b + 128) * 256)


def cmyk_profile(corners: dict, description: str = "Test CMYK") -> bytes:
    """An ICC v2 CMYK output profile with only an A2B0 lut16 of 2 grid points per ink.

    `corners` maps (c, m, y, k) with each 0 or 1 to a Lab colour; all 16 are needed."""
    grid = b""
    for c in (0, 1):  # the first input channel varies slowest
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    grid += struct.pack(">3H", *_lab16(corners[(c, m, y, k)]))
    identity = b"".join(_s15f16(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    linear = struct.pack(">2H", 0, 0xFFFF)  # 2-entry input/output curves: identity
    a2b0 = (
        b"mft2"
        + bytes(4)
        + struct.pack(">4B", 4, 3, 2, 0)
        + identity
        + struct.pack(">2H", 2, 2)
        + linear * 4
        + grid
        + linear * 3
    )
    tags = [
        (b"desc", _desc_tag(description)),
        (b"wtpt", _xyz_tag(D50)),
        (b"A2B0", a2b0),
        (b"cprt", _text_tag("No copyright, test data")),
    ]
    return _profile(b"prtr", b"CMYK", b"Lab ", tags)


# -- independent references ---------------------------------------------------------------


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear sRGB (0..1, unclipped) -> 0..255 floats with the sRGB transfer curve."""
    linear = np.clip(linear, 0.0, 1.0)
    v = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return v * 255


def adobe_rgb_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) Adobe RGB 0..255 -> (N, 3) linear sRGB (unclipped, to check gamut)."""
    linear = (np.asarray(rgb, dtype=np.float64) / 255) ** ADOBE_RGB_GAMMA
    to_xyz = np.array([ADOBE_RGB_COLORANTS[c] for c in "rgb"]).T  # columns: colorants
    return linear @ to_xyz.T @ XYZ_D50_TO_SRGB.T


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(N, 3) CIE Lab (D50) -> (N, 3) linear sRGB (unclipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], axis=1)
    eps = 6 / 29
    t = np.where(f > eps, f**3, 3 * eps**2 * (f - 4 / 29))
    return (t * np.array(D50)) @ XYZ_D50_TO_SRGB.T
