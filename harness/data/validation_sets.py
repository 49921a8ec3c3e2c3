"""Two validation datasets for tuning cpu presets, never a test set (issue 12, item 2).

``validation_a`` and ``validation_b`` are real-photo anomaly datasets in the MVTec AD layout
(../shared/spec/datasets-and-metrics.md section 4.1), read by the same loader as the embedded
dataset, built from photos in the installed wheels that harness.data.embedded does not use
(scikit-image's camera, cell, clock, retina and text; matplotlib's grace_hopper sample), each with
a licence that allows it (the cards record them).

They differ from the embedded generator on purpose, so that a preset tuned here is not tuned to
that generator: a normal view is a jittered quadrilateral of the photo (slight keystone as well as
shift, scale and rotation) under a vignette rather than a linear light ramp, and the defects are
other kinds drawn other ways: thin branching low-contrast cracks, burns, directional smears,
cut-paste from another place of the same image, glare, small chips filled with the background, and
a part flipped in place (a logical anomaly). Every defect is composited with
harness.data.defects.composite, so each mask is exactly the pixels the defect changed.

Every image draws from SeedSequence([dataset salt, seed, class, split, defect, image]); the tree is
built in a staging folder and renamed into place (harness.data.embedded.prepare_generated), PNGs
carry no metadata: the same seed gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from harness.data.defects import SUPERSAMPLING, _busiest_place, _downsampled, blob_points, composite, polygon_alpha
from harness.data.embedded import AnomalousImage, _finished, _save_png, load_source, prepare_generated
from harness.paths import cache_root

GENERATOR_VERSION = 1
IMAGE_SIZE = 256
TRAIN_GOOD = 60
TEST_GOOD = 20
PER_DEFECT = 5
SOURCE_PAD = 64  # reflect padding: a jittered window near the photo's edge never shows an empty corner
SPLIT_CODES = {"train": 0, "test": 1}


@dataclass(frozen=True)
class ViewRecipe:
    """How one class's normal views are cut from its photo, and which defects it gets.

    Textures give ``box`` (x0, y0, x1, y1): the whole rotated window stays inside it. Objects give
    ``centre`` (x, y) and ``shift``, the largest offset of the window centre. Sizes in source pixels.
    """

    name: str
    kind: str  # "texture" | "object"
    source: str  # "skimage.data.<loader>" or "matplotlib:<sample file>"
    crop: tuple[float, float]  # side of the window (min, max)
    rotation: float  # largest absolute angle in degrees
    defects: tuple[str, ...]
    box: tuple[float, float, float, float] | None = None
    centre: tuple[float, float] | None = None
    shift: float = 0.0
    keystone: float = 0.02  # corner jitter as a fraction of the side
    contrast: float = 1.0  # stretch about the view's mean, for a photo too flat to show a defect


@dataclass(frozen=True)
class ValidationSet:
    name: str
    salt: int  # keeps the two sets' random streams apart for the same seed
    classes: tuple[ViewRecipe, ...]


# ------------------------------------------------------------------------------------ sources


@cache
def load_photo(source: str) -> np.ndarray:
    """A bundled photo as uint8 (H, W, C), C = 1 or 3; matplotlib samples by file name, never a download."""
    if source.startswith("matplotlib:"):
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(source.split(":", 1)[1], asfileobj=False)) as photo:
            return np.asarray(photo.convert("RGB"))
    return load_source(source)


@cache
def _padded_bands(source: str) -> tuple[Image.Image, ...]:
    pixels = np.pad(load_photo(source), ((SOURCE_PAD, SOURCE_PAD), (SOURCE_PAD, SOURCE_PAD), (0, 0)), mode="reflect")
    return tuple(Image.fromarray(np.ascontiguousarray(pixels[..., c])) for c in range(pixels.shape[2]))


# -------------------------------------------------------------------------------- normal views


def _window_centre(recipe: ViewRecipe, rng: np.random.Generator, half_extent: float) -> np.ndarray:
    if recipe.box is not None:
        x0, y0, x1, y1 = recipe.box
        return np.array([rng.uniform(x0 + half_extent, x1 - half_extent), rng.uniform(y0 + half_extent, y1 - half_extent)])
    return np.asarray(recipe.centre) + rng.uniform(-recipe.shift, recipe.shift, 2)


def _source_quad(recipe: ViewRecipe, rng: np.random.Generator) -> np.ndarray:
    """The four source corners (upper-left, lower-left, lower-right, upper-right) of one view."""
    side = rng.uniform(*recipe.crop)
    theta = np.deg2rad(rng.uniform(-recipe.rotation, recipe.rotation))
    jitter = recipe.keystone * side
    half_extent = side / 2 * (abs(np.cos(theta)) + abs(np.sin(theta))) + jitter
    centre = _window_centre(recipe, rng, half_extent)
    unit = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], dtype=np.float64) * side / 2
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return centre + unit @ rotation.T + rng.uniform(-jitter, jitter, (4, 2))


_UNIT_Y, _UNIT_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE - 0.5


def _vignetted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, gamma, an off-centre vignette and, on colour images, a slight colour cast."""
    gain = rng.uniform(0.88, 1.12)
    gamma = rng.uniform(0.85, 1.15)
    cx, cy = rng.uniform(-0.25, 0.25, 2)
    falloff = 1.0 - rng.uniform(0.0, 0.25) * ((_UNIT_X - cx) ** 2 + (_UNIT_Y - cy) ** 2)
    cast = rng.uniform(0.95, 1.05, image.shape[2]).astype(np.float32)
    lit = np.float32(255.0) * (image / np.float32(255.0)) ** np.float32(gamma) * falloff[..., None] * (cast * gain)
    return np.clip(lit, 0, 255).astype(np.float32)


def normal_view(recipe: ViewRecipe, rng: np.random.Generator) -> np.ndarray:
    """One defect-free view, float32 (H, W, C) in [0, 255], before sensor noise."""
    quad = (_source_quad(recipe, rng) + SOURCE_PAD).ravel().tolist()
    bands = [np.asarray(band.transform((IMAGE_SIZE, IMAGE_SIZE), Image.Transform.QUAD, quad,
                                       resample=Image.Resampling.BILINEAR), dtype=np.float32)
             for band in _padded_bands(recipe.source)]
    view = np.stack(bands, axis=2)
    if recipe.contrast != 1.0:
        view = np.clip((view - view.mean()) * np.float32(recipe.contrast) + view.mean(), 0, 255)
    return _vignetted(view, rng)


# ------------------------------------------------------------------------------------ defects
# Each drawer: (float32 image (H, W, C), rng) -> (defective image, mask of the changed pixels).


def _inside(rng: np.random.Generator, margin: float) -> np.ndarray:
    return rng.uniform(margin, IMAGE_SIZE - margin, 2)


def _lines_alpha(paths: list[np.ndarray], width: float) -> np.ndarray:
    canvas = Image.new("L", (IMAGE_SIZE * SUPERSAMPLING, IMAGE_SIZE * SUPERSAMPLING), 0)
    draw = ImageDraw.Draw(canvas)
    for path in paths:
        draw.line([tuple(p) for p in (path * SUPERSAMPLING).tolist()], fill=255,
                  width=max(1, int(round(width * SUPERSAMPLING))), joint="curve")
    return _downsampled(canvas, (IMAGE_SIZE, IMAGE_SIZE))


def _jagged_path(rng: np.random.Generator, start: np.ndarray, heading: float, length: float) -> np.ndarray:
    """Short straight segments with sharp turns, stopped at the border: the outline of a crack."""
    steps = max(3, int(length / 6))
    headings = heading + np.cumsum(rng.normal(0, 0.45, steps))
    points = start + np.cumsum(np.stack([np.cos(headings), np.sin(headings)], axis=1) * 6.0, axis=0)
    points = np.vstack([start, points])
    inside = np.all((points >= 2) & (points <= IMAGE_SIZE - 3), axis=1)
    return points[: len(points) if inside.all() else max(2, int(np.argmin(inside)))]


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin, jagged, low-contrast crack with one or two branches: the surface darkened by 20-40 %."""
    heading = rng.uniform(0, 2 * np.pi)
    trunk = _jagged_path(rng, _inside(rng, 50), heading, rng.uniform(60, 130))
    paths = [trunk]
    for _ in range(int(rng.integers(1, 3))):
        fork = trunk[int(rng.integers(1, len(trunk)))]
        paths.append(_jagged_path(rng, fork, heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), rng.uniform(20, 50)))
    alpha = _lines_alpha(paths, rng.uniform(1.2, 2.2))
    return composite(image, image * np.float32(1.0 - rng.uniform(0.2, 0.4)), alpha)


def burn(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A scorch mark: a mottled brownish halo fading outward around a charred core, darkening multiplicatively."""
    shape = image.shape[:2]
    radius = rng.uniform(12, 26)
    centre = _inside(rng, radius + 8)
    halo = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius)), radius / 4)
    core = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius * 0.4)), radius / 8)
    mottle = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
    mottle = 0.75 + 0.25 * mottle / (np.abs(mottle).max() + 1e-6)
    scorch = np.array([0.72, 0.55, 0.38] if image.shape[2] == 3 else [0.6], dtype=np.float32)
    layer = image * scorch * (1.0 - 0.6 * core[..., None])
    return composite(image, layer.astype(np.float32), np.clip(halo * 1.3, 0, 1) * mottle)


def _directional_blur(image: np.ndarray, direction: np.ndarray, reach: int) -> np.ndarray:
    shifted = [ndimage.shift(image, (k * direction[1], k * direction[0], 0), order=1, mode="nearest")
               for k in range(-reach, reach + 1)]
    return np.mean(shifted, axis=0, dtype=np.float32)


def smear(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A greasy wipe across structure: an elongated region blurred along its length, paled and lightened."""
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    length, width = rng.uniform(30, 60), rng.uniform(8, 16)
    centre = _busiest_place(rng, image, length + 2)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    outline = centre + np.outer(length * np.cos(t), direction) + np.outer(width * np.sin(t), [-direction[1], direction[0]])
    alpha = ndimage.gaussian_filter(polygon_alpha(image.shape[:2], outline), width / 3)
    blurred = _directional_blur(image, direction, int(rng.integers(5, 11)))
    film = np.minimum(blurred[alpha > 0.5].mean() * rng.uniform(1.2, 1.4) + 12.0, 255.0)  # one grey: pales colour too
    layer = 0.7 * blurred + 0.3 * film
    return composite(image, layer.astype(np.float32), np.clip(alpha * 1.4, 0, 1) * rng.uniform(0.8, 1.0))


def _rotated_rectangle(centre: np.ndarray, half: np.ndarray, angle: float) -> np.ndarray:
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return centre + corners @ rotation.T


def cut_paste(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rotated rectangle of the same image, cut from another place at least 50 px away, pasted here.

    The target is the busiest of a few places (on an object, not its plain background) and the source
    the most different of a few candidates, so the paste never lands on its own likeness.
    """
    half = rng.uniform(8, 22, 2)
    margin = float(np.hypot(*half)) + 4
    target = _busiest_place(rng, image, margin)
    region = polygon_alpha(image.shape[:2], _rotated_rectangle(target, half, rng.uniform(0, np.pi)))
    inside = region > 0.5
    best, best_difference = None, -1.0
    for _ in range(4):
        source = _inside(rng, margin)
        while np.hypot(*(source - target)) < 50:
            source = _inside(rng, margin)
        offset = np.rint(target - source).astype(int)
        moved = np.roll(image, (offset[1], offset[0]), axis=(0, 1))
        difference = float(np.abs(moved[inside] - image[inside]).mean())
        if difference > best_difference:
            best, best_difference = moved, difference
    return composite(image, best, ndimage.gaussian_filter(region, 0.6))


def glare(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A specular highlight: a soft oval blended toward white, brightest in its middle."""
    radius = rng.uniform(8, 18)
    centre = _inside(rng, radius * 2 + 4)
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    u = (xs - centre[0]) * np.cos(angle) + (ys - centre[1]) * np.sin(angle)
    v = -(xs - centre[0]) * np.sin(angle) + (ys - centre[1]) * np.cos(angle)
    peak = np.exp(-0.5 * ((u / radius) ** 2 + (v / (radius * rng.uniform(0.4, 0.8))) ** 2))
    return composite(image, np.full_like(image, 255.0), peak * rng.uniform(0.6, 0.85))


def _background_level(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[:6].reshape(-1, image.shape[2]), image[-6:].reshape(-1, image.shape[2]),
                             image[:, :6].reshape(-1, image.shape[2]), image[:, -6:].reshape(-1, image.shape[2])])
    return np.median(border, axis=0).astype(np.float32)


def chip(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small straight-edged piece broken off the object, showing the flat background level."""
    radius = rng.uniform(9, 16)
    centre = _busiest_place(rng, image, radius * 2)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 5))))
    corners = centre + radius * rng.uniform(0.7, 1.3, (len(angles), 1)) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    alpha = polygon_alpha(image.shape[:2], corners)
    return composite(image, np.broadcast_to(_background_level(image), image.shape).astype(np.float32), alpha)


def flipped_part(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A square part of the object turned upside down or mirrored in place (a logical anomaly)."""
    half = int(rng.integers(14, 24))
    cx, cy = np.rint(_busiest_place(rng, image, half * 1.5)).astype(int)
    cx, cy = int(np.clip(cx, half + 2, IMAGE_SIZE - half - 2)), int(np.clip(cy, half + 2, IMAGE_SIZE - half - 2))
    part = image[cy - half:cy + half, cx - half:cx + half]
    layer = image.copy()
    layer[cy - half:cy + half, cx - half:cx + half] = np.rot90(part, 2) if rng.random() < 0.5 else part[:, ::-1]
    square = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]], float)
    return composite(image, layer, polygon_alpha(image.shape[:2], square))


DefectDrawer = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
DEFECT_DRAWERS: dict[str, DefectDrawer] = {
    "crack": crack, "burn": burn, "smear": smear, "cut_paste": cut_paste,
    "glare": glare, "chip": chip, "flipped_part": flipped_part,
}

# -------------------------------------------------------------------------------- the two sets

A_TEXTURE = ("crack", "burn", "smear", "cut_paste")
A_OBJECT = ("crack", "burn", "cut_paste", "chip", "flipped_part")
B_TEXTURE = ("crack", "smear", "cut_paste", "glare")
B_OBJECT = ("burn", "chip", "flipped_part", "glare")

VALIDATION_A = ValidationSet("validation_a", 9101, (
    ViewRecipe("fundus", "texture", "skimage.data.retina", (280, 320), 180, A_TEXTURE, box=(480, 260, 1150, 1150)),
    ViewRecipe("notes", "texture", "skimage.data.text", (140, 152), 4, A_TEXTURE, box=(0, 0, 448, 172), keystone=0.015),
    ViewRecipe("cell", "object", "skimage.data.cell", (236, 256), 180, A_OBJECT, centre=(430, 375), shift=8),
    ViewRecipe("clock", "object", "skimage.data.clock", (220, 236), 4, A_OBJECT, centre=(210, 155), shift=6),
    ViewRecipe("portrait", "object", "matplotlib:grace_hopper.jpg", (330, 350), 3, A_OBJECT, centre=(262, 240), shift=6),
))
VALIDATION_B = ValidationSet("validation_b", 9102, (
    ViewRecipe("phase_background", "texture", "skimage.data.cell", (196, 216), 180, B_TEXTURE, box=(0, 0, 320, 660),
               contrast=2.5),
    ViewRecipe("flag", "texture", "matplotlib:grace_hopper.jpg", (112, 124), 4, B_TEXTURE, box=(0, 0, 140, 300)),
    ViewRecipe("cameraman", "object", "skimage.data.camera", (400, 420), 3, B_OBJECT, centre=(230, 250), shift=6),
    ViewRecipe("optic_disc", "object", "skimage.data.retina", (360, 380), 4, B_OBJECT, centre=(232, 650), shift=8),
))
VALIDATION_SETS = {s.name: s for s in (VALIDATION_A, VALIDATION_B)}


def class_counts(recipe: ViewRecipe) -> dict[str, dict[str, int]]:
    """Images per split and defect type, exactly as written (and as the card lists them)."""
    return {"train": {"good": TRAIN_GOOD}, "test": {"good": TEST_GOOD} | {d: PER_DEFECT for d in recipe.defects}}


def default_root(name: str, seed: int = 0) -> Path:
    return cache_root() / name / f"v{GENERATOR_VERSION}-seed{seed}"


def _image_rng(dataset: ValidationSet, seed: int, class_index: int, split: str, defect_index: int, image_index: int):
    sequence = np.random.SeedSequence([dataset.salt, seed, class_index, SPLIT_CODES[split], defect_index, image_index])
    return np.random.Generator(np.random.PCG64(sequence))


def anomalous_view(dataset: ValidationSet, seed: int, class_index: int, defect: str, image_index: int) -> AnomalousImage:
    recipe = dataset.classes[class_index]
    rng = _image_rng(dataset, seed, class_index, "test", recipe.defects.index(defect) + 1, image_index)
    clean = normal_view(recipe, rng)
    defective, mask = DEFECT_DRAWERS[defect](clean, rng)
    if not mask.any():
        raise RuntimeError(f"{dataset.name} generator drew an empty {defect} mask for {recipe.name} {image_index:03d}")
    return AnomalousImage(clean, defective, mask, _finished(defective, rng))


def write_class(dataset: ValidationSet, root: Path, seed: int, class_index: int) -> None:
    """Write one class's train and test images (and masks) under root/<class>."""
    recipe = dataset.classes[class_index]
    folder = root / recipe.name
    for split, count in (("train", TRAIN_GOOD), ("test", TEST_GOOD)):
        for i in range(count):
            rng = _image_rng(dataset, seed, class_index, split, 0, i)
            _save_png(_finished(normal_view(recipe, rng), rng), folder / split / "good" / f"{i:03d}.png")
    for defect in recipe.defects:
        for i in range(PER_DEFECT):
            example = anomalous_view(dataset, seed, class_index, defect, i)
            _save_png(example.pixels, folder / "test" / defect / f"{i:03d}.png")
            _save_png(example.mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:03d}_mask.png")


def prepare_validation_set(name: str, seed: int = 0, force: bool = False, root: Path | None = None) -> Path:
    """Generate a validation set once (atomically) and return its root (default: cache_root()/<name>/v<version>-seed<seed>)."""
    if name not in VALIDATION_SETS:
        raise ValueError(f"unknown validation set {name!r}: expected one of {', '.join(VALIDATION_SETS)}")
    dataset = VALIDATION_SETS[name]

    def write_tree(staging: Path) -> None:
        for class_index in range(len(dataset.classes)):
            write_class(dataset, staging, seed, class_index)

    target = Path(root) if root is not None else default_root(name, seed)
    return prepare_generated(target, GENERATOR_VERSION, seed, write_tree, force)


def prepare_validation_a(seed: int = 0, force: bool = False, root: Path | None = None) -> Path:
    return prepare_validation_set("validation_a", seed, force, root)


def prepare_validation_b(seed: int = 0, force: bool = False, root: Path | None = None) -> Path:
    return prepare_validation_set("validation_b", seed, force, root)
