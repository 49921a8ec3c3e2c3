"""From frozen patch features to binary component masks (spec 4.3 "Offline component masks").

The steps of the official ``segment_image.py`` and ``train.py`` (``filter_bg_noise`` and the
dataset's per-mask Otsu), as far as they carry over to masks held in memory:

- per image, greedy coreset sampling of the patch features (128-d bias-free random projection);
- k-means (MiniBatchKMeans, batch 2048, n_init 10) with ``clusters`` centres per class on the
  class's training coresets;
- per cluster, heat = cosine similarity to the centre minus its mean over the image, clamped at 0,
  bilinearly upsampled (align_corners=True), stored as round(heat * 255) in 8 bits;
- per image and kept cluster, Otsu's threshold (OpenCV's THRESH_OTSU on 8 bits) gives the mask;
- background clusters, judged on the class's first training image: Otsu on the heat without a
  10 px margin, applied to the whole heat; dropped when it touches 3 or more of the 20 x 20 px
  corners or its 11 x 11 box-blurred maximum is not above 64. Pixel sizes are the official ones
  at 448 px, scaled to the mask size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import uniform_filter

from harness.config import ConfigError
from methods.patchcore import approximate_greedy_coreset

OFFICIAL_SIDE = 448  # the side of the official masks; its pixel constants scale from it
OTSU_MARGIN = 10
CORNER_SIDE = 20
BLUR_SIDE = 11
SMALL_MAXIMUM = 64  # on the 0..255 heat: a blurred maximum at or below this is no component
BACKGROUND_CORNERS = 3
KMEANS_BATCH = 2048
KMEANS_INITS = 10
PROJECTION_DIM = 128
CRF_ITERATIONS = 2
CRF_GAUSSIAN = {"sxy": 1, "compat": 3}
CRF_BILATERAL = {"sxy": 67, "srgb": 3, "compat": 4}


class ComponentError(ConfigError):
    """The component stage cannot run with these settings; the message names the setting."""


def scaled_side(pixels: int, mask_size: int) -> int:
    """An official pixel size at 448 px, at ``mask_size`` (at least 1)."""
    return max(1, int(round(pixels * mask_size / OFFICIAL_SIDE)))


# ------------------------------------------------------------------------------- clustering

def coreset_patches(feature: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """(C, h, w) -> the (int(h * w * fraction), C) patches a greedy coreset keeps.

    The official sampler starts from the point with the largest norm of its distances to all
    points; PatchCore's sampler with every point as a start point starts from the largest mean
    distance. The iterations after the first pick are the same.
    """
    patches = feature.flatten(1).T.contiguous()
    chosen = approximate_greedy_coreset(patches, fraction, seed, starting_points=len(patches), projection_dim=PROJECTION_DIM)
    return patches[chosen]


def fit_centres(coreset: np.ndarray, clusters: int, seed: int, class_name: str) -> np.ndarray:
    """(M, C) coreset features of one class -> (clusters, C) float32 k-means centres, seeded."""
    from sklearn.cluster import MiniBatchKMeans

    if len(coreset) < clusters:
        raise ComponentError(
            f"class {class_name!r}: the training coresets hold {len(coreset)} patches, fewer than clusters={clusters}; "
            "raise coreset_fraction or image_size, or lower clusters"
        )
    kmeans = MiniBatchKMeans(n_clusters=clusters, batch_size=KMEANS_BATCH, n_init=KMEANS_INITS, random_state=seed)
    return kmeans.fit(coreset.astype(np.float32)).cluster_centers_.astype(np.float32)


def cluster_heat(features: torch.Tensor, centres: torch.Tensor, mask_size: int) -> torch.Tensor:
    """(n, C, h, w) features, (k, C) centres -> (n, k, m, m) centred cosine heat, clamped at 0."""
    similarity = torch.einsum("kc,nchw->nkhw", F.normalize(centres, dim=1), F.normalize(features, dim=1))
    heat = (similarity - similarity.mean((2, 3), keepdim=True)).clamp_min(0)
    return F.interpolate(heat, size=(mask_size, mask_size), mode="bilinear", align_corners=True)


def as_gray(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """Heat in [0, 1] as the official code writes it: round(heat * 255) in uint8."""
    values = heat.numpy() if isinstance(heat, torch.Tensor) else heat
    return np.clip(np.round(values * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- masks

def otsu_threshold(gray: np.ndarray) -> int:
    """OpenCV's THRESH_OTSU on uint8 values: the first t maximising the between-class variance; 0 if none does."""
    histogram = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = histogram / max(histogram.sum(), 1.0)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(p)
    mu0_sum = np.cumsum(p * levels)
    mu = mu0_sum[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (mu0_sum / w0 - (mu - mu0_sum) / w1) ** 2
    eps = np.finfo(np.float32).eps  # OpenCV skips splits with a class weight under FLT_EPSILON
    between = np.where((w0 >= eps) & (w1 >= eps), between, 0.0)
    best = int(np.argmax(between))
    return best if between[best] > 0 else 0


def blurred_maximum(gray: np.ndarray, side: int) -> float:
    """The maximum of a side x side box blur (OpenCV's default border: reflect without the edge)."""
    return float(uniform_filter(gray.astype(np.float32), size=side, mode="mirror").max())


def corners_touched(binary: np.ndarray, side: int) -> int:
    """How many of the four side x side corner squares hold a foreground pixel."""
    return sum(bool(binary[rows, cols].any()) for rows in (slice(0, side), slice(-side, None)) for cols in (slice(0, side), slice(-side, None)))


def foreground_clusters(first_gray: np.ndarray) -> np.ndarray:
    """(k, m, m) uint8 heat of the class's first training image -> (k,) bool: clusters kept as components."""
    m = first_gray.shape[-1]
    margin, corner, blur = scaled_side(OTSU_MARGIN, m), scaled_side(CORNER_SIDE, m), scaled_side(BLUR_SIDE, m)
    kept = np.zeros(len(first_gray), dtype=bool)
    for cluster, gray in enumerate(first_gray):
        interior = gray[margin:-margin, margin:-margin] if m > 2 * margin else gray
        binary = gray > otsu_threshold(interior)
        kept[cluster] = corners_touched(binary, corner) < BACKGROUND_CORNERS and blurred_maximum(gray, blur) > SMALL_MAXIMUM
    return kept


def image_components(gray: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(k, m, m) uint8 heat of one image -> (k, m, m) bool masks (components first, then empty), (k,) cluster
    of each slot (-1: empty), the component count. A kept cluster is a component of this image when its Otsu
    mask is not empty and its blurred maximum is above SMALL_MAXIMUM (so a blank image has none)."""
    k, m, _ = gray.shape
    blur = scaled_side(BLUR_SIDE, m)
    masks = np.zeros((k, m, m), dtype=bool)
    slots = np.full(k, -1, dtype=np.int16)
    count = 0
    for cluster in np.flatnonzero(kept):
        mask = gray[cluster] > otsu_threshold(gray[cluster])
        if mask.any() and blurred_maximum(gray[cluster], blur) > SMALL_MAXIMUM:
            masks[count], slots[count] = mask, cluster
            count += 1
    return masks, slots, count


# ------------------------------------------------------------------------ DenseCRF (optional)

def dense_crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
        import pydensecrf.utils  # noqa: F401
    except ImportError:
        return False
    return True


def crf_refined(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The official ``dense_crf``: softmax of the (k, m, m) heat over clusters as unaries, a Gaussian and a
    bilateral pairwise term on the image (BGR order, as the official call passes it), 2 iterations ->
    (k, m, m) float32 probabilities. Spatial widths are the official ones at 448 px, scaled to m."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, m, _ = heat.shape
    probabilities = torch.softmax(torch.from_numpy(heat), dim=0).numpy()
    crf = dcrf.DenseCRF2D(m, m, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities)))
    crf.addPairwiseGaussian(sxy=CRF_GAUSSIAN["sxy"] * m / OFFICIAL_SIDE, compat=CRF_GAUSSIAN["compat"])
    crf.addPairwiseBilateral(sxy=CRF_BILATERAL["sxy"] * m / OFFICIAL_SIDE, srgb=CRF_BILATERAL["srgb"],
                             rgbim=np.ascontiguousarray(rgb[:, :, ::-1]), compat=CRF_BILATERAL["compat"])
    return np.asarray(crf.inference(CRF_ITERATIONS), dtype=np.float32).reshape(k, m, m)
