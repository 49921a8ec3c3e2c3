"""The embedded default dataset: real photos shipped in wheels, varied and damaged from a seed.

Sources are scikit-image's bundled images and scikit-learn's sample images, all offline (no
pooch download loaders). Each class crops a source photo with a random position, scale, rotation
and illumination (normal images), and composites defects from harness.data.defects onto some test
images (anomalous images, with exact masks). The tree is written in the MVTec AD layout
(../shared/spec/datasets-and-metrics.md section 4.1) so it is read by the same loader as real data:

    <root>/<class>/train/good/000.png
    <root>/<class>/test/{good,<defect>}/000.png
    <root>/<class>/ground_truth/<defect>/000_mask.png   (0/255, no folder for good)

Every image draws its randomness from SeedSequence([seed, class index, split, defect, image]),
so the output does not depend on generation order, and PNGs are written without metadata: the
same seed gives byte-identical files. The card is datasets/embedded.yaml.

Generator versions live side by side, each under its own dataset name and cache folder, so every
earlier result stays reproducible: v2 is ``embedded`` (card datasets/embedded.yaml), v3 is
``embedded_v3`` (datasets/embedded_v3.yaml: more pose and lighting variation in the normal views,
and subtler defects: thin scratches, faint stains, pits, blended patches, small missing parts,
misplaced and duplicated parts). ``prepare_embedded(seed, version=N)`` builds either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from harness.data.defects import DEFECT_DRAWERS
from harness.paths import cache_root

GENERATOR_VERSION = 2  # of the dataset named "embedded"; 1 was an unreleased draft: never reuse its caches
IMAGE_SIZE = 256
TRAIN_GOOD = 60
TEST_GOOD = 20
COMPLETE_MARKER = ".complete"
OBJECT_PAD = 48  # reflect padding so small rotations of object crops never show an empty corner
TEXTURE_DEFECTS = ("scratch", "hole", "stain", "foreign_patch")
OBJECT_DEFECTS = ("scratch", "stain", "foreign_patch", "missing_part", "displaced_part")
TEXTURE_DEFECTS_V3 = ("thin_scratch", "faint_stain", "pit", "blended_patch")
OBJECT_DEFECTS_V3 = ("thin_scratch", "faint_stain", "small_missing_part", "misplaced_part", "duplicated_part")


@dataclass(frozen=True)
class Lighting:
    """Ranges of the illumination drawn for each normal view (spot and blur are v3 only: 0 draws nothing)."""

    gamma: tuple[float, float] = (0.88, 1.12)
    gain: tuple[float, float] = (0.9, 1.1)
    gradient: float = 0.12  # largest relative brightness change across the image
    cast: tuple[float, float] = (0.96, 1.04)  # per-channel factor on colour images
    spot: float = 0.0  # largest relative brightening at the centre of a broad light spot
    blur: float = 0.0  # largest Gaussian sigma in pixels (focus)


LIGHTING_V2 = Lighting()
LIGHTING_V3 = Lighting(gamma=(0.85, 1.18), gain=(0.88, 1.12), gradient=0.2, cast=(0.95, 1.05), spot=0.12, blur=0.5)


@dataclass(frozen=True)
class ClassRecipe:
    """How one class's normal images are cut from its source photo, and which defects it gets.

    centre is None for textures (crop anywhere the rotated window fits) or the (x, y) of the
    object in the source; rotation is the largest absolute angle in degrees.
    """

    name: str
    kind: str  # "texture" | "object"
    source: str  # "skimage.data.<loader>"
    centre: tuple[float, float] | None
    crop: tuple[float, float]  # side of the source window in source pixels (min, max)
    shift: float  # largest centre offset in source pixels (objects)
    rotation: float
    defects: tuple[str, ...]
    per_defect: int
    lighting: Lighting = LIGHTING_V2


CLASSES: tuple[ClassRecipe, ...] = (
    ClassRecipe("brick", "texture", "skimage.data.brick", None, (256, 296), 0, 8, TEXTURE_DEFECTS, 6),
    ClassRecipe("grass", "texture", "skimage.data.grass", None, (256, 296), 0, 180, TEXTURE_DEFECTS, 6),
    ClassRecipe("gravel", "texture", "skimage.data.gravel", None, (256, 296), 0, 180, TEXTURE_DEFECTS, 6),
    ClassRecipe("tissue", "texture", "skimage.data.immunohistochemistry", None, (256, 296), 0, 180,
                TEXTURE_DEFECTS, 6),
    ClassRecipe("coins", "object", "skimage.data.coins", (192, 151), (248, 264), 5, 2, OBJECT_DEFECTS, 5),
    ClassRecipe("coffee", "object", "skimage.data.coffee", (285, 195), (340, 360), 6, 3, OBJECT_DEFECTS, 5),
)
# v3: wider scale range, more rotation and shift for the objects, stronger and more varied light.
CLASSES_V3: tuple[ClassRecipe, ...] = (
    ClassRecipe("brick", "texture", "skimage.data.brick", None, (232, 320), 0, 12, TEXTURE_DEFECTS_V3, 6, LIGHTING_V3),
    ClassRecipe("grass", "texture", "skimage.data.grass", None, (232, 320), 0, 180, TEXTURE_DEFECTS_V3, 6, LIGHTING_V3),
    ClassRecipe("gravel", "texture", "skimage.data.gravel", None, (232, 320), 0, 180, TEXTURE_DEFECTS_V3, 6,
                LIGHTING_V3),
    ClassRecipe("tissue", "texture", "skimage.data.immunohistochemistry", None, (232, 320), 0, 180,
                TEXTURE_DEFECTS_V3, 6, LIGHTING_V3),
    ClassRecipe("coins", "object", "skimage.data.coins", (192, 151), (240, 276), 14, 6, OBJECT_DEFECTS_V3, 5,
                LIGHTING_V3),
    ClassRecipe("coffee", "object", "skimage.data.coffee", (285, 195), (330, 372), 16, 12, OBJECT_DEFECTS_V3, 5,
                LIGHTING_V3),
)
VERSION_CLASSES = {2: CLASSES, 3: CLASSES_V3}
DATASET_VERSIONS = {"embedded": 2, "embedded_v3": 3}  # dataset name -> generator version (one card each)
DONOR_SOURCES = ("sklearn:china.jpg", "sklearn:flower.jpg", "skimage.data.astronaut", "skimage.data.rocket",
                 "skimage.data.chelsea", "skimage.data.hubble_deep_field")
SPLIT_CODES = {"train": 0, "test": 1}


def class_counts(recipe: ClassRecipe) -> dict[str, dict[str, int]]:
    """Images per split and defect type, exactly as written (and as the card lists them)."""
    test = {"good": TEST_GOOD} | {defect: recipe.per_defect for defect in recipe.defects}
    return {"train": {"good": TRAIN_GOOD}, "test": test}


def version_classes(version: int) -> tuple[ClassRecipe, ...]:
    """The class recipes of a generator version; the error names the versions there are."""
    if version not in VERSION_CLASSES:
        raise ValueError(f"unknown embedded generator version {version!r}: expected one of "
                         f"{', '.join(map(str, VERSION_CLASSES))}")
    return VERSION_CLASSES[version]


def default_root(seed: int = 0, version: int = GENERATOR_VERSION) -> Path:
    return cache_root() / "embedded" / f"v{version}-seed{seed}"


@cache
def load_source(source: str) -> np.ndarray:
    """A bundled photo as uint8 (H, W, C) with C = 1 (grey) or 3; never a download loader."""
    if source.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(source.split(":", 1)[1])
    elif source.startswith("skimage.data."):
        import skimage.data

        pixels = getattr(skimage.data, source.rsplit(".", 1)[1])()
    else:
        raise ValueError(f"unknown embedded source {source!r}: expected 'sklearn:<file>' or 'skimage.data.<name>'")
    pixels = np.asarray(pixels)
    return pixels[..., None] if pixels.ndim == 2 else pixels[..., :3]


@cache
def _padded_source(source: str, pad: int) -> list[Image.Image]:
    pixels = np.pad(load_source(source), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return [Image.fromarray(pixels[..., c]) for c in range(pixels.shape[2])]


def _window_centre(rng: np.random.Generator, recipe: ClassRecipe, source_shape, half_extent: float):
    if recipe.centre is None:  # textures: anywhere the rotated window stays inside the photo
        low_x, high_x = half_extent, source_shape[1] - half_extent
        low_y, high_y = half_extent, source_shape[0] - half_extent
        return rng.uniform(low_x, high_x), rng.uniform(low_y, high_y)
    return (recipe.centre[0] + rng.uniform(-recipe.shift, recipe.shift),
            recipe.centre[1] + rng.uniform(-recipe.shift, recipe.shift))


def normal_image(recipe: ClassRecipe, rng: np.random.Generator) -> np.ndarray:
    """One defect-free view: random window (position, scale, rotation) and illumination, float32."""
    source_shape = load_source(recipe.source).shape
    side = rng.uniform(*recipe.crop)
    theta = np.deg2rad(rng.uniform(-recipe.rotation, recipe.rotation))
    half_extent = side / 2 * (abs(np.cos(theta)) + abs(np.sin(theta)))
    cx, cy = _window_centre(rng, recipe, source_shape, half_extent)
    pad = 0 if recipe.centre is None else OBJECT_PAD
    scale = side / IMAGE_SIZE
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    half = IMAGE_SIZE / 2
    # PIL's affine maps each output pixel (u, v) to the source point (a u + b v + c, d u + e v + f)
    coefficients = (cos, -sin, cx + pad - cos * half + sin * half,
                    sin, cos, cy + pad - sin * half - cos * half)
    channels = [
        np.asarray(band.transform((IMAGE_SIZE, IMAGE_SIZE), Image.Transform.AFFINE, coefficients,
                                  resample=Image.Resampling.BILINEAR), dtype=np.float32)
        for band in _padded_source(recipe.source, pad)
    ]
    image = np.stack(channels, axis=2)
    return _illuminated(image, rng, recipe.lighting)


_CENTRED_Y, _CENTRED_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE - 0.5


def _illuminated(image: np.ndarray, rng: np.random.Generator, lighting: Lighting) -> np.ndarray:
    """Gain, gamma, a linear light gradient, on colour images a colour cast; then spot and focus (v3)."""
    gamma = rng.uniform(*lighting.gamma)
    gain = rng.uniform(*lighting.gain)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = 1.0 + rng.uniform(0, lighting.gradient) * (_CENTRED_X * np.cos(direction) + _CENTRED_Y * np.sin(direction))
    cast = rng.uniform(*lighting.cast, image.shape[2]).astype(np.float32)
    if lighting.spot:
        ramp = ramp * _light_spot(rng, lighting.spot)
    lit = np.float32(255.0) * (image / np.float32(255.0)) ** np.float32(gamma) * ramp[..., None] * (cast * gain)
    lit = np.clip(lit, 0, 255).astype(np.float32)
    if lighting.blur:
        lit = ndimage.gaussian_filter(lit, (rng.uniform(0, lighting.blur),) * 2 + (0,)).astype(np.float32)
    return lit


def _light_spot(rng: np.random.Generator, strength: float) -> np.ndarray:
    """1 + a broad Gaussian bump (a lamp's reflection) at a random place, up to `strength` brighter."""
    x, y = rng.uniform(-0.4, 0.4, 2)
    width = rng.uniform(0.2, 0.45)
    bump = np.exp(-((_CENTRED_X - x) ** 2 + (_CENTRED_Y - y) ** 2) / (2 * width**2))
    return (1.0 + rng.uniform(0, strength) * bump).astype(np.float32)


def _finished(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise (applied to every image, after any defect), then 8-bit quantisation."""
    noisy = image + np.float32(rng.uniform(0.8, 2.5)) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _donor(rng: np.random.Generator) -> np.ndarray:
    return load_source(DONOR_SOURCES[int(rng.integers(len(DONOR_SOURCES)))])


def _image_rng(seed: int, class_index: int, split: str, defect_index: int, image_index: int,
               version: int = GENERATOR_VERSION):
    key = [seed, class_index, SPLIT_CODES[split], defect_index, image_index]
    if version != 2:  # v2's key predates versions; later versions add theirs so no image repeats v2's
        key.append(version)
    sequence = np.random.SeedSequence(key)
    return np.random.Generator(np.random.PCG64(sequence))


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode_pixels = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    Image.fromarray(mode_pixels).save(path, format="PNG", optimize=False, compress_level=1)  # 4x faster than 6, +10 % size


@dataclass(frozen=True)
class AnomalousImage:
    """One anomalous test image: the view before and after the defect, its mask, and the final pixels."""

    clean: np.ndarray  # float32 (H, W, C), before the defect and before noise
    defective: np.ndarray  # float32, after the defect, before noise
    mask: np.ndarray  # bool (H, W): exactly the pixels the defect changed
    pixels: np.ndarray  # uint8 as written, noise included


def anomalous_image(seed: int, class_index: int, defect: str, image_index: int,
                    version: int = GENERATOR_VERSION) -> AnomalousImage:
    recipe = version_classes(version)[class_index]
    rng = _image_rng(seed, class_index, "test", recipe.defects.index(defect) + 1, image_index, version)
    clean = normal_image(recipe, rng)
    defective, mask = DEFECT_DRAWERS[defect](clean, rng, _donor(rng))
    if not mask.any():
        raise RuntimeError(f"embedded generator drew an empty {defect} mask for {recipe.name} {image_index:03d}")
    return AnomalousImage(clean, defective, mask, _finished(defective, rng))


def write_class(root: Path, seed: int, class_index: int, version: int = GENERATOR_VERSION) -> None:
    """Write one class's train and test images (and masks) under root/<class>."""
    recipe = version_classes(version)[class_index]
    folder = root / recipe.name
    for split, count in (("train", TRAIN_GOOD), ("test", TEST_GOOD)):
        for i in range(count):
            rng = _image_rng(seed, class_index, split, 0, i, version)
            _save_png(_finished(normal_image(recipe, rng), rng), folder / split / "good" / f"{i:03d}.png")
    for defect in recipe.defects:
        for i in range(recipe.per_defect):
            example = anomalous_image(seed, class_index, defect, i, version)
            _save_png(example.pixels, folder / "test" / defect / f"{i:03d}.png")
            _save_png(example.mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:03d}_mask.png")


def manifest(root: Path) -> dict[str, str]:
    """sha256 of every file under root by POSIX relative path (the completion marker excluded)."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }


def manifest_digest(entries: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def is_complete(root: Path, generator_version: int = GENERATOR_VERSION) -> bool:
    marker = Path(root) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("generator_version") == generator_version
    except json.JSONDecodeError:
        return False


def prepare_embedded(seed: int = 0, force: bool = False, root: Path | None = None,
                     version: int = GENERATOR_VERSION) -> Path:
    """Generate the embedded dataset of a generator version once (atomically) and return its root.

    The default root is cache_root()/embedded/v<version>-seed<seed>. An existing complete tree of
    that version is returned as is unless force is set.
    """
    classes = version_classes(version)

    def write_tree(staging: Path) -> None:
        for class_index in range(len(classes)):
            write_class(staging, seed, class_index, version)

    target = Path(root) if root is not None else default_root(seed, version)
    return prepare_generated(target, version, seed, write_tree, force)


def prepare_embedded_v3(seed: int = 0, force: bool = False, root: Path | None = None) -> Path:
    """The dataset named embedded_v3: generator v3 (datasets/embedded_v3.yaml)."""
    return prepare_embedded(seed, force, root, version=DATASET_VERSIONS["embedded_v3"])


def prepare_generated(root: Path, generator_version: int, seed: int, write_tree: Callable[[Path], None],
                      force: bool = False) -> Path:
    """Build a generated tree with ``write_tree(staging)`` in a staging folder, mark it complete
    (version, seed, manifest digest) and rename it into place: concurrent callers (Ray workers)
    never see a partial tree, and a complete one of this version is reused unless force is set."""
    if is_complete(root, generator_version) and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_tree(staging)
        entries = manifest(staging)
        marker = {"generator_version": generator_version, "seed": seed, "files": len(entries),
                  "manifest_sha256": manifest_digest(entries)}
        (staging / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if root.exists():
            if is_complete(root, generator_version) and not force:  # another process finished first
                return root
            shutil.rmtree(root)
        try:
            os.rename(staging, root)
        except OSError:
            if not is_complete(root, generator_version):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
