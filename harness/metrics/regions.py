"""Ground-truth regions and their per-pixel overlap weights (spec section 5.1 PRO, 4.3 sPRO).

PRO regions are the 8-connected components of each ground-truth mask (the official MVTec code
labels with a 3x3 structure); sPRO regions are the defects, one per mask channel. Both curves
are means over regions of a per-region overlap at threshold t:

    PRO:  |{p in C : A(p) >= t}| / |C|
    sPRO: min(TP_d(t) / S_d, 1)

Walking one region's pixels from the highest score down, the overlap after k pixels is
min(k, S) / S (S = |C| for PRO). Each pixel is given the fixed-point increment
W(k) - W(k-1), W(k) = round(WEIGHT_ONE * min(k, S) / S), so a region's weights telescope to
exactly W(|C|) and pixels tied on a score bin sum to the same value whatever their order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

WEIGHT_ONE = 1 << 32  # fixed-point 1.0 per region; keeps sums exact in int64 up to 2**31 regions

_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_IMAGE[1] = True  # 3x3 within an image, never across the stack axis


def label_components(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of each mask in an (n, H, W) stack, numbered 1..count across it."""
    labels, count = ndimage.label(np.asarray(masks, dtype=bool), structure=_EIGHT_CONNECTED_PER_IMAGE)
    return labels, int(count)


def overlap_weights(
    keys: np.ndarray, region_ids: np.ndarray, saturation: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point overlap increments of region pixels.

    keys: score-bin keys of the region pixels; region_ids: their region (>= 1); saturation:
    S per region id (indexable by id), or None for PRO (S = region area).
    Returns the keys and the int64 increments, in an order of their own.
    """
    if len(keys) == 0:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    # region ascending, score descending within a region
    order = np.sort((region_ids.astype(np.uint64) << np.uint64(32)) | (np.uint32(0xFFFFFFFF) - keys).astype(np.uint64))
    ids = (order >> np.uint64(32)).astype(np.intp)
    sorted_keys = (np.uint64(0xFFFFFFFF) - (order & np.uint64(0xFFFFFFFF))).astype(np.uint32)
    areas = np.bincount(ids)
    starts = np.cumsum(areas) - areas
    rank = np.arange(1, len(ids) + 1, dtype=np.float64) - starts[ids]
    s = areas[ids].astype(np.float64) if saturation is None else np.asarray(saturation, dtype=np.float64)[ids]
    cumulative = np.floor(np.minimum(rank, s) * float(WEIGHT_ONE) / s + 0.5).astype(np.int64)
    previous = np.empty_like(cumulative)
    previous[0] = 0
    previous[1:] = cumulative[:-1]
    previous[np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))] = 0
    return sorted_keys, cumulative - previous
