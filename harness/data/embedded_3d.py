"""The embedded multi-modal dataset: synthetic RGB + organised point cloud scans, no download (issue 10).

Written in the MVTec 3D-AD layout (../shared/spec/datasets-and-metrics.md section 4.4) and read by
the same ``mvtec_3d`` loader as the real dataset:

    <root>/<class>/{train,validation}/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<class>/test/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}   (gt all zero for good)

How a scan is made (every number in metres unless it says px): one object lies in the middle of a
128 px view seen by a pinhole camera (focal length FOCAL_PX, about 0.7 m away, so a pixel is about
0.5 mm). Each normal view draws a shift, rotation, scale, camera distance, tilt and a smooth random
height ripple. The object's height field is analytic per class (a flattened dome, a grooved plate,
a soft block); z = distance + tilt - height, x and y follow from z through the camera. Pixels off
the object are invalid points (x = y = z = 0), so a depth preparation without the foreground mask
sees them. The colour is a real photo texture (scikit-image's bundled photos, as in
harness.data.embedded) mapped onto the object frame, tinted, lit by a gain and a gentle gradient,
on a dark table; colour never depends on the height, so a height change cannot show in rgb.

Defects, always inside the object: ``dent`` pushes the surface in by 2-4 mm and leaves the colour
untouched (depth only); ``stain`` tints the colour and leaves the geometry untouched (colour only);
``hole`` is a dark, 4-8 mm deep pit (both). Each mask is exactly the pixels the defect changed:
the defect and its defect-free twin share one noise draw (separate generator streams), so outside
the mask their written rgb and xyz are equal bit for bit. Every scan draws from
SeedSequence([seed, class, split, defect, image]) and files carry no varying metadata: the same
seed gives byte-identical trees, built once in a staging folder renamed into place
(``harness.data.embedded.prepare_generated``, shared with the embedded dataset). The card is datasets/embedded_3d.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from harness.data.defects import STAIN_TINTS, blob_points, composite, ellipse_alpha, polygon_alpha
from harness.data.embedded import _save_png, load_source, prepare_generated
from harness.paths import cache_root

GENERATOR_VERSION = 1
IMAGE_SIZE = 128
TRAIN_GOOD, VALIDATION_GOOD, TEST_GOOD, PER_DEFECT = 40, 8, 10, 5
DEFECTS = ("dent", "stain", "hole")
DEFECT_SHOWS_IN = {"dent": ("depth",), "stain": ("rgb",), "hole": ("rgb", "depth")}
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
FOCAL_PX = 1400.0
MM = 1e-3
TABLE_RGB = (38.0, 36.0, 34.0)

_ROWS, _COLS = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) - np.float32((IMAGE_SIZE - 1) / 2)


@dataclass(frozen=True)
class ObjectRecipe:
    """One class: outline and height field of its object, its photo texture and how much it turns."""

    name: str
    outline: str  # "disc" | "rounded_square" | "ellipse"
    source: str  # a scikit-image photo, read by harness.data.embedded.load_source
    tint: tuple[float, float, float]  # multiplies the photo (grey photos become this colour)
    rotation: float  # largest absolute angle in degrees


CLASSES: tuple[ObjectRecipe, ...] = (
    ObjectRecipe("cookie", "disc", "skimage.data.gravel", (1.0, 0.72, 0.45), 180),
    ObjectRecipe("tile", "rounded_square", "skimage.data.brick", (0.95, 0.55, 0.45), 8),
    ObjectRecipe("sponge", "ellipse", "skimage.data.grass", (0.95, 0.9, 0.45), 10),
)


@dataclass(frozen=True)
class Scan:
    """One view before sensor noise: colour float32 (H, W, 3) in [0, 255], z float32 (H, W), object mask."""

    rgb: np.ndarray
    z: np.ndarray
    foreground: np.ndarray


@dataclass(frozen=True)
class AnomalousScan:
    """A defective scan as written, its defect-free twin (same view, same noise) and the exact mask."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    xyz: np.ndarray  # float32 (H, W, 3), zeros off the object
    clean_rgb: np.ndarray
    clean_xyz: np.ndarray
    mask: np.ndarray  # bool (H, W)


def class_counts() -> dict[str, dict[str, int]]:
    """Scans per split and defect type of every class, exactly as written (and as the card lists them)."""
    return {"train": {"good": TRAIN_GOOD}, "validation": {"good": VALIDATION_GOOD},
            "test": {"good": TEST_GOOD} | {defect: PER_DEFECT for defect in DEFECTS}}


def default_root(seed: int = 0) -> Path:
    return cache_root() / "embedded_3d" / f"v{GENERATOR_VERSION}-seed{seed}"


def _scan_rngs(seed: int, class_index: int, split: str, defect_index: int, image_index: int):
    """Two independent streams for one scan: the view (and its defect), and the sensor noise."""
    sequence = np.random.SeedSequence([seed, class_index, SPLIT_CODES[split], defect_index, image_index])
    view, noise = sequence.spawn(2)
    return np.random.Generator(np.random.PCG64(view)), np.random.Generator(np.random.PCG64(noise))


# --- the normal view ------------------------------------------------------------------------------

def _object_frame(recipe: ObjectRecipe, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's (p, q) in the object's own frame, in px: shifted, turned and scaled per view."""
    shift_x, shift_y = rng.uniform(-6, 6, 2)
    theta = np.deg2rad(rng.uniform(-recipe.rotation, recipe.rotation))
    scale = rng.uniform(0.94, 1.06)
    cx, cy = _COLS - np.float32(shift_x), _ROWS - np.float32(shift_y)
    cos, sin = np.float32(np.cos(theta) / scale), np.float32(np.sin(theta) / scale)
    return cos * cx + sin * cy, -sin * cx + cos * cy


def _outline(recipe: ObjectRecipe, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    if recipe.outline == "disc":
        return np.hypot(p, q) < 44
    if recipe.outline == "rounded_square":
        corner = np.hypot(np.maximum(np.abs(p) - 32, 0), np.maximum(np.abs(q) - 32, 0))
        return (np.abs(p) < 40) & (np.abs(q) < 40) & (corner < 8)
    return (p / 52) ** 2 + (q / 34) ** 2 < 1


def _height(recipe: ObjectRecipe, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The class's height field above the table, in metres (analytic in the object frame)."""
    if recipe.outline == "disc":  # a flattened dome 7 mm high at the centre, 1 mm at the rim
        return (1 + 6 * (1 - (np.hypot(p, q) / 44) ** 4)) * MM
    if recipe.outline == "rounded_square":  # a 4 mm plate with 1 mm grooves every 16 px
        groove = np.exp(-(((p + 8) % 16 - 8) ** 2) / 4.5) + np.exp(-(((q + 8) % 16 - 8) ** 2) / 4.5)
        return (4 - np.minimum(groove, 1)) * MM
    radius = np.sqrt((p / 52) ** 2 + (q / 34) ** 2)  # a soft 10 mm block with a shallow wave on top
    return (10 * (1 - np.minimum(radius, 1) ** 6) + 0.6 * np.cos(p / 7) * np.cos(q / 9)) * MM


def _ripple(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE)), 10)
    return (field / np.abs(field).max() * amplitude).astype(np.float32)


def _texture(recipe: ObjectRecipe, p: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo mapped onto the object frame (it turns with the object), tinted, float32 (H, W, 3)."""
    photo = load_source(recipe.source).astype(np.float32)
    k = rng.uniform(1.8, 2.2)  # photo px per view px
    reach = k * IMAGE_SIZE / 2 * 1.5
    ox = rng.uniform(reach, photo.shape[1] - reach)
    oy = rng.uniform(reach, photo.shape[0] - reach)
    coords = np.stack([oy + k * q, ox + k * p])
    bands = [ndimage.map_coordinates(photo[..., c], coords, order=1, mode="reflect") for c in range(photo.shape[2])]
    texture = np.stack(bands * (3 // len(bands)), axis=2)
    return texture * np.asarray(recipe.tint, dtype=np.float32)


def _lit(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.92, 1.08)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = 1 + rng.uniform(0, 0.08) * (_COLS * np.cos(direction) + _ROWS * np.sin(direction)) / (IMAGE_SIZE / 2)
    return np.clip(rgb * np.float32(gain) * ramp[..., None].astype(np.float32), 0, 255).astype(np.float32)


def normal_scan(recipe: ObjectRecipe, rng: np.random.Generator) -> Scan:
    """One defect-free view of the class's object: colour, z and the object mask, before noise."""
    p, q = _object_frame(recipe, rng)
    foreground = _outline(recipe, p, q)
    distance = rng.uniform(0.69, 0.71)
    tilt_x, tilt_y = rng.uniform(-4e-6, 4e-6, 2)  # metres per px: up to 0.25 mm across half the view
    z = distance + tilt_x * _COLS + tilt_y * _ROWS - _height(recipe, p, q) - _ripple(rng, 0.3 * MM)
    colour = np.where(foreground[..., None], _texture(recipe, p, q, rng), np.asarray(TABLE_RGB, dtype=np.float32))
    return Scan(_lit(colour, rng), np.where(foreground, z, 0).astype(np.float32), foreground)


def finished(scan: Scan, noise: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sensor noise on colour and depth, then 8-bit colour and the organised point cloud (x, y, z)."""
    rgb_noise = np.float32(noise.uniform(1.0, 2.0)) * noise.standard_normal(scan.rgb.shape, dtype=np.float32)
    z_noise = np.float32(0.05 * MM) * noise.standard_normal(scan.z.shape, dtype=np.float32)
    rgb = np.clip(np.rint(scan.rgb + rgb_noise), 0, 255).astype(np.uint8)
    z = np.where(scan.foreground, scan.z + z_noise, 0).astype(np.float32)
    pinhole = np.float32(1 / FOCAL_PX)
    xyz = np.stack([_COLS * pinhole * z, _ROWS * pinhole * z, z], axis=2)
    return rgb, np.ascontiguousarray(xyz, dtype=np.float32)


# --- defects --------------------------------------------------------------------------------------

def _centre_inside(foreground: np.ndarray, reach: float, rng: np.random.Generator) -> np.ndarray:
    """(x, y) of a pixel at least ``reach`` px inside the object."""
    inside = np.argwhere(ndimage.distance_transform_edt(foreground) > reach)
    row, col = inside[int(rng.integers(len(inside)))]
    return np.array([col, row], dtype=np.float64) + rng.uniform(-0.5, 0.5, 2)


def _deepened(z: np.ndarray, alpha: np.ndarray, depth: float) -> tuple[np.ndarray, np.ndarray]:
    deeper, mask = composite(z[..., None], (z + np.float32(depth))[..., None], alpha)
    return deeper[..., 0], mask


def dent(scan: Scan, rng: np.random.Generator) -> tuple[Scan, np.ndarray]:
    """The surface pushed in by 2-4 mm over a soft irregular blob; the colour is not touched."""
    shape = scan.z.shape
    radius = rng.uniform(7, 12)
    centre = _centre_inside(scan.foreground, 1.8 * radius + 2, rng)
    alpha = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius)), radius / 4) * scan.foreground
    z, mask = _deepened(scan.z, alpha, rng.uniform(2, 4) * MM)
    return replace(scan, z=z), mask


def stain(scan: Scan, rng: np.random.Generator) -> tuple[Scan, np.ndarray]:
    """A blotch of a colour far from the object's own; the geometry is not touched."""
    shape = scan.z.shape
    radius = rng.uniform(8, 13)
    centre = _centre_inside(scan.foreground, 1.6 * radius + 2, rng)
    envelope = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius)), radius / 8)
    alpha = np.clip(envelope * 2, 0, 1) * rng.uniform(0.7, 0.9) * scan.foreground
    own = scan.rgb[scan.foreground].mean(axis=0)
    tints = sorted(STAIN_TINTS, key=lambda tint: -np.abs(np.subtract(tint, own)).sum())[:2]
    tint = np.asarray(tints[int(rng.integers(2))], dtype=np.float32)
    rgb, mask = composite(scan.rgb, 0.15 * scan.rgb + 0.85 * tint, alpha)
    return replace(scan, rgb=rgb), mask


def hole(scan: Scan, rng: np.random.Generator) -> tuple[Scan, np.ndarray]:
    """A dark pit 4-8 mm deep: colour and geometry change over the same pixels."""
    shape = scan.z.shape
    radius = rng.uniform(5, 9)
    centre = _centre_inside(scan.foreground, 1.2 * radius + 3, rng)
    radii = np.array([radius, radius * rng.uniform(0.6, 1.0)])
    alpha = ndimage.gaussian_filter(ellipse_alpha(shape, centre, radii, rng.uniform(0, np.pi)), 0.7) * scan.foreground
    rgb, mask = composite(scan.rgb, 0.2 * scan.rgb + rng.uniform(5, 15), alpha)
    z, _ = _deepened(scan.z, alpha, rng.uniform(4, 8) * MM)
    return replace(scan, rgb=rgb, z=z), mask


DEFECT_MAKERS: dict[str, Callable[[Scan, np.random.Generator], tuple[Scan, np.ndarray]]] = {
    "dent": dent, "stain": stain, "hole": hole,
}


def anomalous_scan(seed: int, class_index: int, defect: str, image_index: int) -> AnomalousScan:
    """Test scan ``image_index`` of a defect type, with its defect-free twin for checking the mask."""
    view, noise = _scan_rngs(seed, class_index, "test", DEFECTS.index(defect) + 1, image_index)
    clean = normal_scan(CLASSES[class_index], view)
    defective, mask = DEFECT_MAKERS[defect](clean, view)
    noise_state = noise.bit_generator.state
    clean_rgb, clean_xyz = finished(clean, noise)
    noise.bit_generator.state = noise_state  # the twin gets the very same noise
    rgb, xyz = finished(defective, noise)
    if not mask.any():
        raise RuntimeError(f"embedded_3d generator drew an empty {defect} mask for {CLASSES[class_index].name} {image_index:03d}")
    return AnomalousScan(rgb, xyz, clean_rgb, clean_xyz, mask)


# --- the tree -------------------------------------------------------------------------------------

def save_xyz(xyz: np.ndarray, path: Path) -> None:
    """An H x W x 3 float32 point cloud as one contiguous TIFF page (as the official xyz files read back),
    zlib-compressed, without the shape description tifffile would add."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, xyz, photometric="rgb", planarconfig="contig", compression="zlib", metadata=None)


def _write_scan(folder: Path, index: int, rgb: np.ndarray, xyz: np.ndarray, mask: np.ndarray | None) -> None:
    _save_png(rgb, folder / "rgb" / f"{index:03d}.png")
    save_xyz(xyz, folder / "xyz" / f"{index:03d}.tiff")
    if mask is not None:
        _save_png(mask.astype(np.uint8) * 255, folder / "gt" / f"{index:03d}.png")


def write_class(root: Path, seed: int, class_index: int) -> None:
    """Write one class's train, validation and test scans (and test masks) under root/<class>."""
    recipe = CLASSES[class_index]
    folder = root / recipe.name
    no_defect = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for split, count in (("train", TRAIN_GOOD), ("validation", VALIDATION_GOOD), ("test", TEST_GOOD)):
        for i in range(count):
            view, noise = _scan_rngs(seed, class_index, split, 0, i)
            rgb, xyz = finished(normal_scan(recipe, view), noise)
            _write_scan(folder / split / "good", i, rgb, xyz, no_defect if split == "test" else None)
    for defect in DEFECTS:
        for i in range(PER_DEFECT):
            scan = anomalous_scan(seed, class_index, defect, i)
            _write_scan(folder / "test" / defect, i, scan.rgb, scan.xyz, scan.mask)


def prepare_embedded_3d(seed: int = 0, force: bool = False, root: Path | None = None) -> Path:
    """Generate the dataset once and return its root: cache_root()/embedded_3d/v<GENERATOR_VERSION>-seed<seed>
    by default; a complete tree there is reused unless force is set."""
    def write_tree(staging: Path) -> None:
        for class_index in range(len(CLASSES)):
            write_class(staging, seed, class_index)

    target = Path(root) if root is not None else default_root(seed)
    return prepare_generated(target, GENERATOR_VERSION, seed, write_tree, force)
