"""The built-in dataset ("shapes"): generated on first use, never downloaded.

Ten classes of shapes that differ in outline and structure (solid, hollow, pointed, striped,
tiled), each drawn with a random colour on a random two-colour gradient background, at a random
position, scale, rotation and aspect ratio, over clutter (lines and blobs in random colours,
some crossing the shape) and pixel noise. Colour, size and position carry no information about
the class, so a network has to learn shape. The images are JPEG files in an ImageFolder tree
(``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``), so the built-in data goes through
exactly the loading code a real ``--data`` tree does.

Generation is deterministic for a seed (each image has its own NumPy generator seeded from
``(seed, split, class, index)``), atomic (written into a temporary directory beside the root and
renamed into place; a manifest with the parameters and :data:`VERSION` is written last), and
reused when a complete tree with the same parameters already exists. A file lock makes
concurrent callers (e.g. the ranks of a ``torchrun`` job) wait for one generation instead of
repeating it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from fastalex.training.system import usable_cpus

__all__ = [
    "CLASSES",
    "VERSION",
    "default_cache_dir",
    "ensure_builtin_dataset",
    "render_image",
]

# Bump whenever the drawing changes: a cached tree from another version is regenerated.
VERSION = 2

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

# Defaults sized for the CLI's built-in preset: AlexNet needs >= 67 px inputs, the trainer
# crops ~100 px out of these 128 px images, and 10 x 600 training images is enough to learn the
# task while a 2-core CPU still sees several epochs in a few minutes.
DEFAULT_IMAGE_SIZE = 128
DEFAULT_TRAIN_PER_CLASS = 600
DEFAULT_VAL_PER_CLASS = 100

_MANIFEST = "manifest.json"
_SPLITS = ("train", "val")
_SUPERSAMPLE = 2  # the shape mask is drawn at 2x and box-filtered down: anti-aliased edges
_JPEG_QUALITY = 90
_MIN_CONTRAST = 90.0  # Euclidean RGB distance between shape and background colour


def default_cache_dir() -> Path:
    """$FASTALEX_CACHE, else $XDG_CACHE_HOME/fastalex, else ~/.cache/fastalex."""
    if os.environ.get("FASTALEX_CACHE"):
        return Path(os.environ["FASTALEX_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastalex"
    return Path.home() / ".cache" / "fastalex"


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


# ---------------------------------------------------------------------------------------------
# The ImageFolder tree on disk
# ---------------------------------------------------------------------------------------------


def _params(image_size: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    return {
        "image_size": image_size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "jpeg_quality": _JPEG_QUALITY,
    }


def _manifest(params: dict) -> dict:
    return {
        "generator": "fastalex.training.data.builtin",
        "version": VERSION,
        "classes": list(CLASSES),
        "params": params,
    }


def _file_name(name: str, index: int) -> str:
    return f"{name}_{index:05d}.jpg"


def _is_complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished tree generated with exactly these parameters."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest != _manifest(params):
        return False
    for split in _SPLITS:
        count = params[f"{split}_per_class"]
        for name in CLASSES:
            folder = root / split / name
            if not folder.is_dir() or sum(1 for _ in os.scandir(folder)) != count:
                return False
    return True


def _chunks(params: dict, chunk: int = 50) -> list[tuple[str, int, int, int]]:
    """Work items (split, class index, first, stop): images [first, stop) of one folder."""
    items = []
    for split in _SPLITS:
        n = params[f"{split}_per_class"]
        for class_index in range(len(CLASSES)):
            items += [(split, class_index, i, min(i + chunk, n)) for i in range(0, n, chunk)]
    return items


def _render_chunk(tmp: Path, params: dict, item: tuple[str, int, int, int]) -> int:
    split, class_index, first, stop = item
    name = CLASSES[class_index]
    for i in range(first, stop):
        # One generator per image, seeded by its identity: the output does not depend on how
        # the work is split between processes.
        rng = np.random.default_rng([params["seed"], _SPLITS.index(split), class_index, i])
        image = render_image(name, rng, params["image_size"])
        image.save(tmp / split / name / _file_name(name, i), quality=params["jpeg_quality"])
    return stop - first


def _default_workers() -> int:
    return max(1, min(usable_cpus(), 8))


def _generate(tmp: Path, params: dict, progress: bool, workers: int) -> None:
    for split in _SPLITS:
        for name in CLASSES:
            (tmp / split / name).mkdir(parents=True)
    items = _chunks(params)
    total = len(CLASSES) * (params["train_per_class"] + params["val_per_class"])
    bar = tqdm(total=total, desc="generating built-in dataset", unit="img", disable=not progress)
    with bar:
        if workers <= 1 or total < 1000:  # a pool costs more than it saves on small trees
            for item in items:
                bar.update(_render_chunk(tmp, params, item))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(partial(_render_chunk, tmp, params), items):
                    bar.update(done)
    with open(tmp / _MANIFEST, "w") as f:  # written last: its presence means a complete tree
        json.dump(_manifest(params), f, indent=2)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _locked(lock_file: Path):
    """An exclusive advisory lock (POSIX flock; a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _temp_prefix(root: Path) -> str:
    return f".{root.name}.tmp-"


def ensure_builtin_dataset(
    root: str | os.PathLike | None = None,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """The root of the built-in ImageFolder tree, generated first if needed.

    ``root=None`` means ``default_cache_dir()/"shapes-v<VERSION>-<params>"``. A tree at
    ``root`` made with other parameters or by another :data:`VERSION` of the generator is
    replaced; a directory there that this generator did not make (no manifest) is never
    touched: that is a ``FileExistsError``. ``workers`` processes draw the images (default:
    the usable CPUs, at most 8); the result does not depend on it.
    """
    for arg, value, low in (
        ("image_size", image_size, 16),
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 1),
        ("seed", seed, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    params = _params(image_size, train_per_class, val_per_class, seed)
    if root is None:
        tag = f"{image_size}px-{train_per_class}-{val_per_class}-seed{seed}"
        root = default_cache_dir() / f"shapes-v{VERSION}-{tag}"
    root = Path(root).expanduser().absolute()
    if _is_complete(root, params):
        return root

    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        if _is_complete(root, params):  # another process finished it while we waited
            return root
        if root.exists() and not (root / _MANIFEST).exists() and any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not a fastalex built-in dataset (no {_MANIFEST}); "
                "refusing to overwrite it: pass another root"
            )
        # Under the lock, any temporary tree left beside the root is from a generation that
        # was killed: it is removed, never reused.
        for leftover in root.parent.glob(_temp_prefix(root) + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(root), dir=root.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the tree from other users
            _generate(tmp, params, progress, workers or _default_workers())
            if root.exists():  # an outdated tree (or an empty directory): swap it out
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(root), dir=root.parent))
                os.rename(root, old / "old")
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
