"""Procedural landscape scenes: the embedded default dataset.

A colorization network sees only lightness, so a toy dataset is only useful if colour can
be *predicted* from lightness, shape and position. Each scene is built from a few kinds of
structure, and each kind has a typical colour:

* sky: deep blue at the top fading to pale blue at the horizon (about one scene in eight is
  a sunset, orange near the horizon), with a bright sun disc and soft white clouds;
* mountains: blue-grey far ranges, grey-brown near ranges, white above a snow line;
* water: blue, tinted by the sky near the horizon and darker towards the viewer, with a
  broken bright reflection under the sun;
* grass: yellow-green in the distance, darker saturated green in front, with texture;
* trees: dark green crowns (conifers or round) on brown trunks.

What a region is follows from its outline, texture, position and brightness, and its hue
follows from what it is. Colours are jittered a little per scene so the mapping is not a
lookup table, and a few levels of per-pixel noise keep regions from being flat.

Rendering is vectorised numpy at the target size with analytic one-pixel soft edges (cheap
anti-aliasing). It avoids transcendental functions (exp, sin, pow), whose last bits differ
between maths libraries, and uses only exactly rounded arithmetic, sqrt and PCG64 draws, so a
(seed, size) pair should give the same bytes on every machine. Geometry is drawn in unit
coordinates from its own random stream, so a seed has the same layout at every size.
"""

from __future__ import annotations

import hashlib
import numbers
import operator
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from PIL import Image

MIN_SIZE, MAX_SIZE = 32, 512


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")


def _hash_seed(*parts: int) -> int:
    # Hashing lets negative or huge seeds work and makes nearby seeds unrelated.
    text = ",".join(str(operator.index(p)) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _soft(dist: np.ndarray, px: float) -> np.ndarray:
    """Coverage from a signed distance (positive inside), ramping over one pixel."""
    return np.clip(dist * px + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray | tuple) -> None:
    img += alpha[..., None] * (np.asarray(color, np.float32) - img)


def _noise1d(rng: np.random.Generator, n: int, octaves: int, base: int = 3) -> np.ndarray:
    """Fractal value noise over n samples, rescaled to [0, 1]; draws do not depend on n."""
    x = (np.arange(n) + 0.5) / n
    out, amp = np.zeros(n), 1.0
    for k in range(octaves):
        knots = base * 2**k
        out += amp * np.interp(x, np.linspace(0.0, 1.0, knots + 1), rng.random(knots + 1))
        amp *= 0.5
    return (out - out.min()) / (out.max() - out.min() + 1e-9)


def _jitter(rng: np.random.Generator, color: tuple, amount: float) -> np.ndarray:
    return np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _box(s: int, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
    """Pixel slices covering a unit-coordinate box (plus a pixel of margin), or None."""
    i0, i1 = max(int(y0 * s) - 1, 0), min(int(y1 * s) + 2, s)
    j0, j1 = max(int(x0 * s) - 1, 0), min(int(x1 * s) + 2, s)
    return (slice(i0, i1), slice(j0, j1)) if i0 < i1 and j0 < j1 else None


class _Canvas(NamedTuple):
    """The picture being painted (float RGB, changed in place) and its pixel coordinates."""

    img: np.ndarray
    X: np.ndarray  # (1, s): unit x of each column's centre
    Y: np.ndarray  # (s, 1): unit y of each row's centre
    s: int


class _Sky(NamedTuple):
    horizon: float
    sunset: bool
    hor: np.ndarray  # colour at the horizon: it also hazes mountains and tints water


class _Sun(NamedTuple):
    shown: bool
    x: float  # drawn even when not shown: it also says which side mountains are lit from
    r: float
    color: tuple


# Every helper below draws from `rng` (and `tex`) in the order render_scene calls them; that
# order is part of the dataset: changing it changes every scene.


def render_scene(seed: int, size: int = 96) -> Image.Image:
    """RGB image of size x size, fully determined by (seed, size)."""
    _check_size(size)
    key = _hash_seed(seed)
    rng = np.random.default_rng([key, 0])  # layout: same draws at every size
    tex = np.random.default_rng([key, 1])  # per-pixel texture: depends on size
    s = int(size)
    coords = ((np.arange(s) + 0.5) / s).astype(np.float32)
    Y, X = coords[:, None], coords[None, :]

    sky, img = _sky(rng, Y, s)
    c = _Canvas(img, X, Y, s)
    sun = _sun(rng, c, sky)
    _clouds(rng, c, sky)
    _mountains(rng, c, sky, sun)
    # Ground: an optional dark forest band on the far shore, then water, then grass.
    _far_forest(rng, c, sky)
    grass_top = _water(rng, tex, c, sky, sun)
    _grass(rng, tex, c, sky, grass_top)
    _trees(rng, c, sky, grass_top)

    # A few levels of per-pixel noise, then round to bytes.
    img += 3.0 * (tex.random((s, s, 3), np.float32) + tex.random((s, s, 3), np.float32) - 1.0)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def _sky(rng: np.random.Generator, Y: np.ndarray, s: int) -> tuple[_Sky, np.ndarray]:
    """A vertical gradient; sunsets swap the pale horizon for orange. Returns the new image."""
    horizon = rng.uniform(0.42, 0.6)
    sunset = rng.random() < 0.12
    if sunset:
        top, hor = _jitter(rng, (60, 70, 140), 15), _jitter(rng, (250, 145, 80), 12)
    else:
        top, hor = _jitter(rng, (40, 95, 190), 15), _jitter(rng, (175, 210, 240), 10)
    t = np.sqrt(np.clip(Y / horizon, 0.0, 1.0))[..., None]
    img = np.broadcast_to(top + (hor - top) * t, (s, s, 3)).copy()
    return _Sky(horizon, sunset, hor), img


def _sun(rng: np.random.Generator, c: _Canvas, sky: _Sky) -> _Sun:
    """A white-yellow disc with a halo (in six scenes of ten); low in the sky at sunset."""
    u = rng.uniform
    shown = rng.random() < 0.6
    sx, sr = u(0.1, 0.9), u(0.035, 0.065)
    sy = sky.horizon - u(0.08, 0.15) if sky.sunset else u(0.08, sky.horizon - 0.15)
    color = (255, 225, 150) if sky.sunset else (255, 252, 230)
    if shown:
        d2 = (c.X - sx) ** 2 + (c.Y - sy) ** 2
        _paint(c.img, 0.5 / (1.0 + d2 / (1.8 * sr) ** 2), color)
        _paint(c.img, _soft(sr - np.sqrt(d2), c.s), color)
    return _Sun(shown, sx, sr, color)


def _clouds(rng: np.random.Generator, c: _Canvas, sky: _Sky) -> None:
    """Up to four clouds: unions of round puffs with a flat, greyer base."""
    u, s, horizon = rng.uniform, c.s, sky.horizon
    for _ in range(int(rng.integers(0, 5))):
        cx, cy, cw = u(-0.05, 1.05), u(0.06, horizon - 0.12), u(0.1, 0.3)
        puffs = [
            (cx + cw * u(-0.5, 0.5), cy - u(0.0, 0.035), cw * u(0.15, 0.3))
            for _ in range(int(rng.integers(3, 7)))
        ]
        opacity, base = u(0.7, 0.95), cy + 0.015
        box = _box(s, cx - cw, cx + cw, cy - cw * 0.5, base)
        if box is None:
            continue
        by, bx = box
        y, x = c.Y[by], c.X[:, bx]
        alpha = np.zeros((y.shape[0], x.shape[1]), np.float32)
        for px, py, pr in puffs:
            alpha = np.maximum(alpha, _soft(pr - np.sqrt((x - px) ** 2 + (y - py) ** 2), s / 2))
        alpha *= _soft(base - y, s) * opacity
        shade = np.clip((y - cy + 0.05) / 0.07, 0.0, 1.0)[..., None]
        white = np.float32((250, 215, 200) if sky.sunset else (250, 250, 253))
        grey = np.float32((185, 150, 160) if sky.sunset else (200, 208, 222))
        _paint(c.img[by, bx], alpha, white + (grey - white) * shade)


def _mountains(rng: np.random.Generator, c: _Canvas, sky: _Sky, sun: _Sun) -> None:
    """Up to two ranges, far ones hazier and bluer; snow above a ragged snow line."""
    u, s, Y, horizon = rng.uniform, c.s, c.Y, sky.horizon
    ranges = [((115, 130, 160), u(0.14, 0.3), 0.35), ((120, 105, 90), u(0.06, 0.15), 0.1)]
    for col, height, haze in ranges[: int(rng.choice(3, p=[0.25, 0.35, 0.4]))]:
        ridge = horizon - height * (0.1 + 0.9 * _noise1d(rng, s, 5)).astype(np.float32)
        inside = _soft(Y - ridge, s)
        # Light from the sun's side: slopes facing it are brighter. The slope is taken on a
        # smoothed ridge (running mean via cumsum) so faces are broad, not per-column streaks.
        k = max(s // 16, 2)
        cum = np.cumsum(np.pad(ridge, (k, k), mode="edge"), dtype=np.float64)
        slope = (cum[2 * k :] - 2 * cum[k:-k] + cum[: -2 * k]) * (s / (k * k))
        side = 1.0 if sun.x < 0.5 else -1.0
        lit = (1.0 + np.clip(-slope * side * 0.8, -0.25, 0.25)).astype(np.float32)
        depth = np.clip((Y - ridge) / height, 0.0, 1.0)[..., None]
        body = _jitter(rng, col, 10) * lit[:, None]
        body = body + (sky.hor - body) * (haze + 0.3 * depth)
        _paint(c.img, inside, body)
        if rng.random() < 0.75:
            snow_y = horizon - height * u(0.55, 0.8) + 0.03 * (_noise1d(rng, s, 4, 6) - 0.5)
            snow = np.float32((238, 241, 247)) * np.minimum(lit, 1.05)[:, None]
            _paint(c.img, inside * _soft(snow_y - Y, s), np.minimum(snow, 255))


def _far_forest(rng: np.random.Generator, c: _Canvas, sky: _Sky) -> None:
    """In four scenes of ten, a dark band of forest just above the horizon."""
    if rng.random() < 0.4:
        treeline = sky.horizon - rng.uniform(0.01, 0.035) * _noise1d(rng, c.s, 3, 12)
        _paint(c.img, _soft(c.Y - treeline, c.s), _jitter(rng, (35, 75, 40), 8))


def _water(
    rng: np.random.Generator, tex: np.random.Generator, c: _Canvas, sky: _Sky, sun: _Sun
) -> np.ndarray:
    """In about half the scenes, water below the horizon with the sun's broken reflection.
    Returns where the grass starts in each column (the horizon when there is no water)."""
    s, X, Y, horizon = c.s, c.X, c.Y, sky.horizon
    grass_top = np.full(s, horizon, np.float32)
    if rng.random() < 0.55:
        below = _soft(Y - horizon, s)
        depth = rng.uniform(0.12, 0.35) * (1.0 - horizon) / 0.5
        grass_top = horizon + depth * (1.0 + 0.4 * (_noise1d(rng, s, 3) - 0.5))
        deep = _jitter(rng, (25, 70, 140), 10)
        far = (sky.hor + deep) * 0.5
        t = np.clip((Y - horizon) / (1.0 - horizon), 0.0, 1.0)[..., None]
        water = far + (deep * 0.75 - far) * np.sqrt(t)
        # Horizontal ripples: per-row brightness jitter stretched across the width.
        rows = tex.random((s, 1)).astype(np.float32)
        water = water * (0.95 + 0.1 * rows[..., None])
        _paint(c.img, below, water)
        if sun.shown:
            glint = np.clip(1.0 - np.abs(X - sun.x) / (1.3 * sun.r), 0.0, 1.0) * (rows > 0.5)
            _paint(c.img, below * glint * 0.7 * (1.0 - t[..., 0]), sun.color)
    return grass_top


def _grass(
    rng: np.random.Generator,
    tex: np.random.Generator,
    c: _Canvas,
    sky: _Sky,
    grass_top: np.ndarray,
) -> None:
    """Grass from `grass_top` down: yellow-green far, darker green near, patchy texture."""
    s, Y = c.s, c.Y
    far_g, near_g = _jitter(rng, (135, 165, 70), 12), _jitter(rng, (55, 125, 45), 10)
    if sky.sunset:
        far_g, near_g = far_g * 0.75, near_g * 0.75
    t = np.clip((Y - grass_top) / (1.0 - grass_top + 1e-3), 0.0, 1.0)[..., None]
    patches = Image.fromarray(rng.random((6, 6)).astype(np.float32), "F")
    patches = np.asarray(patches.resize((s, s), Image.Resampling.BILINEAR))
    texture = 0.92 + 0.14 * patches + 0.12 * (tex.random((s, s)).astype(np.float32) - 0.5)
    _paint(c.img, _soft(Y - grass_top, s), (far_g + (near_g - far_g) * t) * texture[..., None])


def _trees(rng: np.random.Generator, c: _Canvas, sky: _Sky, grass_top: np.ndarray) -> None:
    """Up to six trees standing on the grass, larger nearer the viewer, drawn back to front."""
    u, s, horizon = rng.uniform, c.s, sky.horizon
    trees = []
    for _ in range(int(rng.integers(0, 7))):
        tx = u(0.03, 0.97)
        gy = float(grass_top[min(int(tx * s), s - 1)])
        conifer = rng.random() < 0.5
        color = _jitter(rng, (30, 72, 40) if conifer else (50, 105, 40), 7)
        trees.append((u(gy + 0.02, 1.05), tx, conifer, u(0.8, 1.2), color))
    for ty, tx, conifer, scale, color in sorted(trees, key=lambda tree: tree[0]):
        th = (0.05 + 0.3 * (ty - horizon) / (1.0 - horizon)) * scale
        if ty - th > 1.0 or (box := _box(s, tx - 0.3 * th, tx + 0.3 * th, ty - th, ty)) is None:
            continue
        by, bx = box
        _tree(c.img[by, bx], c.X[:, bx], c.Y[by], s, tx, ty, th, conifer, color)


def _tree(
    patch: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    s: int,
    tx: float,
    ty: float,
    th: float,
    conifer: bool,
    color: np.ndarray,
) -> None:
    """One tree `th` high whose trunk stands at (tx, ty), painted into `patch` (the pixels
    at columns x, rows y); draws nothing."""
    trunk_w, crown_bottom = (0.035 if conifer else 0.045) * th, ty - 0.3 * th
    trunk = _soft(trunk_w - np.abs(x - tx), s) * _soft(ty - y, s)
    _paint(patch, trunk * _soft(y - crown_bottom + 0.1 * th, s), (95, 65, 40))
    color = color * (1.0 + np.clip((tx - x) / th, -0.2, 0.2))[..., None]  # lit from the left
    if conifer:
        apex, bottom = ty - th, ty - 0.15 * th
        half = 0.2 * th * (y - apex) / (bottom - apex)
        crown = _soft(half - np.abs(x - tx), s) * _soft(y - apex, s) * _soft(bottom - y, s)
    else:
        cy, r = ty - 0.6 * th, 0.27 * th
        crown = _soft(r - np.sqrt((x - tx) ** 2 + ((y - cy) / 1.2) ** 2), s)
    _paint(patch, crown, color)


def iter_scenes(count: int, *, size: int = 96, seed: int = 0) -> Iterator[tuple[str, Image.Image]]:
    """Yield (key, image) for `count` scenes; key like 'synthetic-000042'.

    Scene i uses a seed derived from (seed, i), so different base seeds give different
    datasets. Arguments are checked here, not on the first next().
    """
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    _check_size(size)
    base = operator.index(seed)

    def scenes() -> Iterator[tuple[str, Image.Image]]:
        for i in range(count):
            yield f"synthetic-{i:06d}", scene_image(i, size=size, seed=base)

    return scenes()


def scene_image(index: int, *, size: int = 96, seed: int = 0) -> Image.Image:
    """Scene `index` of the dataset with base `seed` (the same image `iter_scenes` yields)."""
    return render_scene(_hash_seed(seed, index), size)
