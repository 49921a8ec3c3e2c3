"""Order-preserving integer keys for float scores.

A float32 score maps to a uint32 key whose unsigned order equals the float order (flip the sign bit
of non-negative values, all bits of negative ones). Distinct finite floats get distinct keys, so
counting pixels per key is an exact histogram over the distinct scores; dropping the lowest
``level`` bits of a key merges adjacent float32 values into one bin (the declared binning of
``docs/metrics.md``). float16 scores get 16-bit keys and a lookup table to the float32 key space,
so float16 maps are histogrammed with one ``np.bincount`` and no sort.
"""

from __future__ import annotations

import numpy as np

_SIGN32 = np.uint32(0x80000000)
_SIGN16 = np.uint16(0x8000)


def canonical_float32(values: np.ndarray) -> np.ndarray:
    """Scores as a fresh float32 array with -0.0 folded into +0.0 (equal floats, equal keys)."""
    return np.asarray(values, dtype=np.float32) + np.float32(0.0)


def float32_keys(values32: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values (use ``canonical_float32`` first)."""
    bits = np.ascontiguousarray(values32, dtype=np.float32).view(np.uint32)
    flip = (bits.view(np.int32) >> 31).view(np.uint32) | _SIGN32
    return bits ^ flip


def float16_keys(values16: np.ndarray) -> np.ndarray:
    """Order-preserving uint16 keys of float16 values, -0.0 folded into +0.0."""
    bits = (np.asarray(values16, dtype=np.float16) + np.float16(0.0)).view(np.uint16)
    flip = (bits.view(np.int16) >> 15).view(np.uint16) | _SIGN16
    return bits ^ flip


def _float16_key_to_float32_key() -> np.ndarray:
    keys16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    bits16 = np.where(keys16 & _SIGN16, keys16 ^ _SIGN16, ~keys16).astype(np.uint16)
    with np.errstate(invalid="ignore"):
        values = bits16.view(np.float16).astype(np.float32)
    return float32_keys(values)


FLOAT16_KEY_TO_FLOAT32_KEY = _float16_key_to_float32_key()


def is_float16_exact(values32: np.ndarray) -> bool:
    """True when every float32 value is representable in float16 (so the fast exact path applies)."""
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values32.astype(np.float16).astype(np.float32), values32))


def first_non_finite(stack: np.ndarray) -> int | None:
    """Index along axis 0 of the first map holding NaN or inf, or None when all are finite."""
    if np.isfinite(stack).all():
        return None
    finite_per_item = np.isfinite(stack.reshape(len(stack), -1)).all(axis=1)
    return int(np.flatnonzero(~finite_per_item)[0])


def distinct_keys(values32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct uint32 keys of canonical float32 values and how many values hold each.

    float16-representable values are counted with one ``np.bincount`` over their 65,536 keys; others
    with a sort.
    """
    values32 = np.asarray(values32, dtype=np.float32).reshape(-1)
    if is_float16_exact(values32):
        counts = np.bincount(float16_keys(values32).astype(np.intp), minlength=1 << 16)
        occupied = np.flatnonzero(counts)
        return FLOAT16_KEY_TO_FLOAT32_KEY[occupied], counts[occupied].astype(np.int64)
    keys, counts = np.unique(float32_keys(values32), return_counts=True)
    return keys, counts.astype(np.int64)
