"""The built-in dataset's drawings: ten classes of shapes over clutter.

The classes differ in outline and structure (solid, hollow, pointed, striped, tiled). Each image
draws its shape with a random colour on a random two-colour gradient background, at a random
position, scale, rotation and aspect ratio, over clutter (lines and blobs in random colours,
some crossing the shape) and pixel noise. Colour, size and position carry no information about
the class, so a network has to learn shape. Everything is drawn from the NumPy generator the
caller passes, so an image is a function of that generator's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "render_image"]

CLASSES: tuple[str, ...] = (
    "arrow",
    "checker",
    "crescent",
    "cross",
    "disc",
    "ring",
    "square_outline",
    "star",
    "stripes",
    "triangle",
)

_SUPERSAMPLE = 2  # the shape mask is drawn at 2x and box-filtered down: anti-aliased edges
_MIN_CONTRAST = 90.0  # Euclidean RGB distance between shape and background colour


# ---------------------------------------------------------------------------------------------
# Shapes. Each class is a list of (polygon, paint) in unit coordinates (the shape fits the unit
# disc, centred at the origin); paint 255 draws, 0 cuts a hole. Per-image proportions come from
# the image's generator so that no two instances of a class are the same figure.
# ---------------------------------------------------------------------------------------------

Polygon = np.ndarray  # [K, 2] float64, unit coordinates
Layers = list[tuple[Polygon, int]]


def _circle(r: float, cx: float = 0.0, cy: float = 0.0, k: int = 64) -> Polygon:
    t = np.linspace(0.0, 2.0 * math.pi, k, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _disc(rng: np.random.Generator) -> Layers:
    return [(_circle(1.0), 255)]


def _ring(rng: np.random.Generator) -> Layers:
    return [(_circle(1.0), 255), (_circle(rng.uniform(0.5, 0.72)), 0)]


def _crescent(rng: np.random.Generator) -> Layers:
    return [(_circle(1.0), 255), (_circle(rng.uniform(0.8, 0.95), rng.uniform(0.35, 0.55)), 0)]


def _triangle(rng: np.random.Generator) -> Layers:
    # Roughly equilateral; the vertices wander a little so the class is not one template.
    angles = np.array([90.0, 210.0, 330.0]) + rng.uniform(-12.0, 12.0, size=3)
    t = np.deg2rad(angles)
    return [(np.stack([np.cos(t), np.sin(t)], axis=1), 255)]


def _square_outline(rng: np.random.Generator) -> Layers:
    h = 0.72
    inner = h * rng.uniform(0.55, 0.72)
    return [(_rect(-h, -h, h, h), 255), (_rect(-inner, -inner, inner, inner), 0)]


def _cross(rng: np.random.Generator) -> Layers:
    w = rng.uniform(0.2, 0.3)
    return [(_rect(-1.0, -w, 1.0, w), 255), (_rect(-w, -1.0, w, 1.0), 255)]


def _star(rng: np.random.Generator) -> Layers:
    inner = rng.uniform(0.38, 0.5)
    t = math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 255)]


def _arrow(rng: np.random.Generator) -> Layers:
    w = rng.uniform(0.15, 0.22)  # shaft half-width
    neck = rng.uniform(0.05, 0.3)  # where the head starts
    head = rng.uniform(0.5, 0.65)  # head half-width
    pts = [(-1.0, -w), (neck, -w), (neck, -head), (1.0, 0.0), (neck, head), (neck, w), (-1.0, w)]
    return [(np.array(pts, dtype=np.float64), 255)]


def _stripes(rng: np.random.Generator) -> Layers:
    n = int(rng.integers(3, 5))  # 3 or 4 bars
    h = 0.75
    pitch = 2 * h / (2 * n - 1)
    return [(_rect(-h + 2 * i * pitch, -h, -h + (2 * i + 1) * pitch, h), 255) for i in range(n)]


def _checker(rng: np.random.Generator) -> Layers:
    n = 3
    h = 0.75
    cell = 2 * h / n
    layers: Layers = []
    for i in range(n):
        for j in range(n):
            if (i + j) % 2 == 0:
                x0, y0 = -h + i * cell, -h + j * cell
                layers.append((_rect(x0, y0, x0 + cell, y0 + cell), 255))
    return layers


_SHAPES: dict[str, Callable[[np.random.Generator], Layers]] = {
    "arrow": _arrow,
    "checker": _checker,
    "crescent": _crescent,
    "cross": _cross,
    "disc": _disc,
    "ring": _ring,
    "square_outline": _square_outline,
    "star": _star,
    "stripes": _stripes,
    "triangle": _triangle,
}
assert tuple(sorted(_SHAPES)) == CLASSES  # ImageFolder sorts class folders: keep the same order


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A shape colour and a background colour far enough apart for the shape to be visible."""
    while True:
        fg, bg = _random_colour(rng), _random_colour(rng)
        if np.linalg.norm(fg - bg) >= _MIN_CONTRAST:
            return fg, bg


def _gradient(rng: np.random.Generator, size: int, base: np.ndarray, spread: float) -> np.ndarray:
    """A linear gradient around ``base`` in a random direction: [size, size, 3] float32."""
    direction = rng.uniform(0.0, 2.0 * math.pi)
    delta = rng.normal(0.0, spread, size=3).astype(np.float32)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None] * delta  # [size, 3]
    across = math.cos(direction) * ramp  # varies along x
    down = math.sin(direction) * ramp  # varies along y
    return base.astype(np.float32) + across[None, :, :] + down[:, None, :]


def _clutter_colour(rng: np.random.Generator, fg: np.ndarray) -> tuple[int, int, int]:
    # Some clutter takes the shape's own colour, so colour alone does not mark the shape.
    colour = fg if rng.random() < 0.2 else _random_colour(rng)
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def _draw_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int, fg):
    for _ in range(n):
        x0, y0, x1, y1 = rng.uniform(-0.1 * size, 1.1 * size, size=4)
        width = int(rng.integers(1, max(2, size // 40) + 1))
        draw.line([(x0, y0), (x1, y1)], fill=_clutter_colour(rng, fg), width=width)


def _draw_blobs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int, fg):
    for _ in range(n):
        cx, cy = rng.uniform(0, size, size=2)
        rx, ry = rng.uniform(0.03, 0.09, size=2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_clutter_colour(rng, fg))


def _shape_mask(name: str, rng: np.random.Generator, size: int) -> Image.Image:
    """The class's shape at a random pose: a size x size "L" image of coverage (255 = inside)."""
    big = size * _SUPERSAMPLE
    radius = rng.uniform(0.28, 0.45) * big  # the unit disc's radius in pixels
    aspect = rng.uniform(0.85, 1.15)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    margin = radius * 0.9  # the shape may touch the border, never leave the image
    cx, cy = rng.uniform(margin, big - margin, size=2)
    scale = np.array([radius * aspect, radius / aspect])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])

    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, paint in _SHAPES[name](rng):
        pts = (polygon * scale) @ rot.T + (cx, cy)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=paint)
    return mask.resize((size, size), Image.Resampling.BOX)


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_image(name: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One image of class ``name`` (an RGB PIL image, size x size), drawn with ``rng``."""
    if name not in _SHAPES:
        raise ValueError(f"name: unknown class {name!r}; expected one of {CLASSES}")
    fg, bg = _contrasting_colours(rng)

    canvas = _to_image(_gradient(rng, size, bg, 40.0))
    draw = ImageDraw.Draw(canvas)
    _draw_blobs(draw, rng, size, int(rng.integers(1, 4)), fg)
    _draw_lines(draw, rng, size, int(rng.integers(1, 5)), fg)

    mask = _shape_mask(name, rng, size)
    canvas = Image.composite(_to_image(_gradient(rng, size, fg, 30.0)), canvas, mask)
    _draw_lines(ImageDraw.Draw(canvas), rng, size, int(rng.integers(0, 2)), fg)  # occluders

    # Pixel noise, uniform (cheaper to draw than Gaussian) with a random standard deviation.
    sigma = rng.uniform(2.0, 8.0)
    noise = rng.random(size=(size, size, 3), dtype=np.float32) - np.float32(0.5)
    pixels = np.asarray(canvas, dtype=np.float32) + noise * np.float32(sigma * math.sqrt(12.0))
    return _to_image(pixels + np.float32(0.5))  # + 0.5: round to nearest
