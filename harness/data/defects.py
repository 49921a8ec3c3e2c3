"""Synthetic surface and object defects composited onto real photos, each with its exact mask.

Used by the embedded datasets (harness.data.embedded); v2's drawers are byte-stable (the tests pin their
output), v3's are the subtler kinds below the v3 marker. Every drawer takes a float32 image
of shape (H, W, C) with values in [0, 255], a numpy Generator and a donor photo (only the foreign
and blended patches use it), and returns the defective image and a boolean mask. The mask marks exactly the
pixels the compositing changed: alpha below ALPHA_FLOOR is set to zero before compositing, and the
mask is alpha > 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ALPHA_FLOOR = 0.2
SUPERSAMPLING = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges

DefectDrawer = Callable[[np.ndarray, np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def composite(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend `layer` over `image` with `alpha` (H, W); returns the new image and the changed-pixel mask."""
    alpha = np.where(alpha < ALPHA_FLOOR, 0.0, np.clip(alpha, 0.0, 1.0)).astype(np.float32)[..., None]
    blended = image * (1.0 - alpha) + layer * alpha
    return blended.astype(np.float32), alpha[..., 0] > 0


def _canvas(shape: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("L", (shape[1] * SUPERSAMPLING, shape[0] * SUPERSAMPLING), 0)
    return canvas, ImageDraw.Draw(canvas)


def _downsampled(canvas: Image.Image, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(canvas.resize((shape[1], shape[0]), Image.Resampling.BOX), dtype=np.float32) / 255.0


def ellipse_alpha(shape: tuple[int, int], centre, radii, angle: float) -> np.ndarray:
    """Anti-aliased filled ellipse (radii in pixels, angle in radians) as alpha in [0, 1]."""
    t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    x = radii[0] * np.cos(t)
    y = radii[1] * np.sin(t)
    px = centre[0] + x * np.cos(angle) - y * np.sin(angle)
    py = centre[1] + x * np.sin(angle) + y * np.cos(angle)
    return polygon_alpha(shape, np.stack([px, py], axis=1))


def polygon_alpha(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Anti-aliased filled polygon given (N, 2) x/y points in pixel coordinates."""
    canvas, draw = _canvas(shape)
    draw.polygon([tuple(p) for p in (points * SUPERSAMPLING).tolist()], fill=255)
    return _downsampled(canvas, shape)


def blob_points(rng: np.random.Generator, centre, radius: float, corners: int = 12) -> np.ndarray:
    """An irregular star-convex outline around `centre`, radius varying by up to +-35 %."""
    step = 2.0 * np.pi / corners
    angles = np.arange(corners) * step + rng.uniform(-0.3, 0.3, corners) * step  # evenly spread: never a sliver
    radii = radius * rng.uniform(0.65, 1.35, corners)
    radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3.0  # smooth out spikes
    return np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)


def _place(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> np.ndarray:
    margin = radius + 4
    return np.array([rng.uniform(margin, shape[1] - margin), rng.uniform(margin, shape[0] - margin)])


def _busiest_place(rng: np.random.Generator, image: np.ndarray, radius: float, candidates: int = 8) -> np.ndarray:
    """The candidate position with the most local contrast: missing parts should hit an object part."""
    grey = image.mean(axis=2)
    size = max(3, int(radius))
    local_var = ndimage.uniform_filter(grey**2, size) - ndimage.uniform_filter(grey, size) ** 2
    places = [_place(rng, grey.shape, radius) for _ in range(candidates)]
    scores = [local_var[int(p[1]), int(p[0])] for p in places]
    return places[int(np.argmax(scores))]


def _contrasting_value(rng: np.random.Generator, image: np.ndarray) -> float:
    """A grey level far from the mean of `image` (pixels): bright on dark regions, dark on bright ones."""
    return float(rng.uniform(215, 250) if image.mean() < 128 else rng.uniform(5, 40))


def _curve(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """A smooth random-walk polyline of about `length` pixels, cut where it would leave the image."""
    steps = 24
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, steps))
    step = length / steps
    start = _place(rng, shape, 48)
    points = start + np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
    points = np.vstack([start, points])
    inside = np.all((points >= 3) & (points <= np.array([shape[1] - 4, shape[0] - 4])), axis=1)
    return points[: int(np.argmin(inside)) if not inside.all() else len(points)]  # stop at the border


def _line_alpha(shape: tuple[int, int], points: np.ndarray, width: float) -> np.ndarray:
    canvas, draw = _canvas(shape)
    draw.line([tuple(p) for p in (points * SUPERSAMPLING).tolist()], fill=255,
              width=int(round(width * SUPERSAMPLING)), joint="curve")
    return _downsampled(canvas, shape)


def scratch(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line (random walk on the heading), anti-aliased, brighter or darker than the surface."""
    return _painted_line(image, rng, (70, 170), (3.0, 5.5), (0.85, 1.0))


def _painted_line(image: np.ndarray, rng: np.random.Generator, length, width, opacity) -> tuple[np.ndarray, np.ndarray]:
    """A curve of a length, width and opacity drawn from the ranges, in a grey that contrasts with the image."""
    shape = image.shape[:2]
    points = _curve(rng, shape, rng.uniform(*length))
    alpha = _line_alpha(shape, points, rng.uniform(*width)) * rng.uniform(*opacity)
    layer = np.full_like(image, _contrasting_value(rng, image))
    return composite(image, layer, alpha)


def hole(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark elliptical hole with a shaded interior and a soft shadowed rim."""
    return _hole(image, rng, rng.uniform(9, 26))


def _hole(image: np.ndarray, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    shape = image.shape[:2]
    radii = np.array([radius, radius * rng.uniform(0.6, 1.0)])
    centre = _place(rng, shape, radius + 4)
    angle = rng.uniform(0, np.pi)
    inner = ellipse_alpha(shape, centre, radii, angle)
    outer = ndimage.gaussian_filter(ellipse_alpha(shape, centre, radii + 3.0, angle), 1.0)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    shading = ((xs - centre[0]) * np.cos(light) + (ys - centre[1]) * np.sin(light)) / radius
    interior = (rng.uniform(8, 30) + 14.0 * shading)[..., None]
    layer = inner[..., None] * interior + (1.0 - inner[..., None]) * image * 0.45
    return composite(image, layer, np.maximum(inner, outer))


STAIN_TINTS = ((125, 75, 35), (40, 60, 150), (60, 110, 50), (150, 40, 40), (30, 30, 30))


def stain(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A low-frequency blotch of colour (grey level on grey images) with soft, irregular edges."""
    return _stain(image, rng, (20, 44), (0.8, 0.95))


def _stain(image: np.ndarray, rng: np.random.Generator, radius, opacity) -> tuple[np.ndarray, np.ndarray]:
    shape = image.shape[:2]
    envelope, alpha = _blotch(rng, shape, rng.uniform(*radius))
    alpha = alpha * rng.uniform(*opacity)
    if image.shape[2] == 3:
        tint = np.array(STAIN_TINTS[rng.integers(len(STAIN_TINTS))], dtype=np.float32)
    else:
        tint = np.array([_contrasting_value(rng, image[envelope > 0.5])], dtype=np.float32)
    layer = 0.15 * image + 0.85 * tint
    return composite(image, layer, alpha)


def _blotch(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft irregular envelope and an alpha in [0, 1] with a mottled inside, around a random centre."""
    centre = _place(rng, shape, radius)
    envelope = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius)), radius / 10)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), radius / 4)
    texture = 0.85 + 0.15 * texture / (np.abs(texture).max() + 1e-6)
    return envelope, np.clip(envelope * 2.0, 0, 1) * texture


def foreign_patch(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A piece cut from a different photo pasted with soft edges (a foreign object on the surface)."""
    shape = image.shape[:2]
    radius = rng.uniform(14, 36)
    centre = _place(rng, shape, radius)
    alpha = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius, corners=8)), 0.8)
    inside = alpha > 0.5
    best, best_contrast = None, -1.0
    for _ in range(4):  # of a few donor crops, keep the one that stands out most (not a patch of sky)
        patch = _donor_crop(rng, donor, image)
        contrast = float(np.abs(patch[inside].mean(0) - image[inside].mean(0)).mean() + patch[inside].std())
        if contrast > best_contrast:
            best, best_contrast = patch, contrast
    return composite(image, best, alpha)


def _donor_crop(rng: np.random.Generator, donor: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A random image-sized window of the donor photo as float32, grey when the image is grey."""
    shape = image.shape[:2]
    dy = int(rng.integers(0, donor.shape[0] - shape[0] + 1))
    dx = int(rng.integers(0, donor.shape[1] - shape[1] + 1))
    patch = donor[dy:dy + shape[0], dx:dx + shape[1]].astype(np.float32)
    if image.shape[2] == 1 and patch.shape[2] == 3:
        patch = patch.mean(axis=2, keepdims=True)
    return patch


def _inpainted(image: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """Fill `region` from its surroundings by normalised convolution (blur of the outside only)."""
    keep = (region < ALPHA_FLOOR).astype(np.float32)
    weight = ndimage.gaussian_filter(keep, sigma)
    filled = np.stack([ndimage.gaussian_filter(image[..., c] * keep, sigma) for c in range(image.shape[2])], axis=2)
    return filled / np.maximum(weight, 1e-3)[..., None]


def missing_part(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A part of the object removed: an irregular region replaced by the surrounding background."""
    return _removed_part(image, rng, rng.uniform(16, 36))


def _removed_part(image: np.ndarray, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    centre = _busiest_place(rng, image, radius)
    alpha = ndimage.gaussian_filter(polygon_alpha(image.shape[:2], blob_points(rng, centre, radius)), 1.0)
    return composite(image, _inpainted(image, alpha, radius * 0.7), alpha)


def displaced_part(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A part cut out and pasted shifted: the hole it leaves is filled with background."""
    radius = rng.uniform(16, 32)
    return _relocated_part(image, rng, radius, (radius * 0.9, radius * 1.6), leave_hole=True)


def _relocated_part(image: np.ndarray, rng: np.random.Generator, radius: float, distance_range,
                    leave_hole: bool) -> tuple[np.ndarray, np.ndarray]:
    """A part at a busy place copied to a spot `distance_range` away; with leave_hole its old place is emptied."""
    shape = image.shape[:2]
    centre = _busiest_place(rng, image, radius)
    direction = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(*distance_range)
    shift = np.array([np.cos(direction), np.sin(direction)]) * distance
    target = np.clip(centre + shift, radius + 4, np.array([shape[1], shape[0]]) - radius - 4)
    shift = target - centre
    outline = blob_points(rng, centre, radius, corners=10)
    source_alpha = ndimage.gaussian_filter(polygon_alpha(shape, outline), 0.8)
    target_alpha = ndimage.gaussian_filter(polygon_alpha(shape, outline + shift), 0.8)
    emptied, removed = image, np.zeros(shape, dtype=bool)
    if leave_hole:
        emptied, removed = composite(image, _inpainted(image, source_alpha, radius * 0.7), source_alpha)
    moved = ndimage.shift(image, (shift[1], shift[0], 0), order=1, mode="nearest")
    result, pasted = composite(emptied, moved, target_alpha)
    return result, removed | pasted


# Generator v3 (subtle defects): thin and faint, small, or logical (a part where it does not belong).

def thin_scratch(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thinner, shorter, fainter scratch: 2.5-4 px (v2 3-5.5), 50-150 px long, 70-95 % opacity."""
    return _painted_line(image, rng, (50, 150), (2.5, 4.0), (0.7, 0.95))


def faint_stain(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smaller, paler stain: radius 18-36 px (v2 20-44) at 65-85 % opacity (v2 80-95)."""
    return _stain(image, rng, (18, 36), (0.65, 0.85))


def pit(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small hole, 7-14 px along its longer radius (v2's hole 9-26): a little piece of the surface missing."""
    return _hole(image, rng, rng.uniform(7, 14))


def blended_patch(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small piece of another photo, its mean brightness matched to the surface it covers."""
    shape = image.shape[:2]
    radius = rng.uniform(16, 28)
    centre = _place(rng, shape, radius)
    alpha = ndimage.gaussian_filter(polygon_alpha(shape, blob_points(rng, centre, radius, corners=8)), 1.2)
    patch = _donor_crop(rng, donor, image)
    inside = alpha > 0.5
    matched = patch - patch[inside].mean(0) + image[inside].mean(0)
    return composite(image, np.clip(matched, 0, 255), alpha)


def small_missing_part(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small part (12-20 px radius; v2 16-36) of the object removed and filled with its surroundings."""
    return _removed_part(image, rng, rng.uniform(12, 20))


def misplaced_part(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A logical anomaly: a whole part moved 2-4 radii away, its old place filled with background."""
    radius = rng.uniform(14, 26)
    return _relocated_part(image, rng, radius, (radius * 2.0, radius * 4.0), leave_hole=True)


def duplicated_part(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A logical anomaly: a part copied 1.5-3.5 radii away while the original stays in place."""
    radius = rng.uniform(14, 26)
    return _relocated_part(image, rng, radius, (radius * 1.5, radius * 3.5), leave_hole=False)


DEFECT_DRAWERS: dict[str, DefectDrawer] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "foreign_patch": foreign_patch,
    "missing_part": missing_part,
    "displaced_part": displaced_part,
    "thin_scratch": thin_scratch,
    "faint_stain": faint_stain,
    "pit": pit,
    "blended_patch": blended_patch,
    "small_missing_part": small_missing_part,
    "misplaced_part": misplaced_part,
    "duplicated_part": duplicated_part,
}
