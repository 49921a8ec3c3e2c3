"""One split's component masks as one .npz file: written atomically, verified when read.

The file holds the masks bit-packed, the counts, the cluster of each mask slot, the sample ids
and classes, the class k-means centres and kept clusters (for the training split), the content
key and a sha256 of all of it. A reader checks the key, the sample ids, the shapes and the digest;
anything that does not match (a truncated, damaged or foreign file) reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

_ARRAYS = ("masks_packed", "counts", "slots", "sample_ids", "class_names", "centre_classes", "centres", "kept")


@dataclass
class ComponentMasks:
    """Component masks of one split, row i for ``sample_ids[i]`` (the order of the samples passed in).

    masks (N, k, m, m) bool: each image's components first, then empty slots; counts (N,) int64;
    slots (N, k) int16: the k-means cluster behind each mask (-1 for an empty slot).
    centres (classes, k, C) float32 and kept (classes, k) bool, per ``centre_classes``: the training
    split's k-means models (a test split carries the ones it was computed with).
    """

    key: str
    sample_ids: list[str]
    class_names: list[str]
    masks: np.ndarray
    counts: np.ndarray
    slots: np.ndarray
    centre_classes: list[str]
    centres: np.ndarray
    kept: np.ndarray
    path: Path | None = None
    loaded: bool = field(default=False, compare=False)  # True: read from the cache

    def rows(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's masks (B, k, m, m) bool and counts (B,) long, rows by position in the split."""
        index = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.masks[index])), torch.from_numpy(self.counts[index].astype(np.int64))

    def class_model(self, class_name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(centres (k, C), kept (k,)) of one class, or None when the split has no model for it."""
        if class_name not in self.centre_classes:
            return None
        i = self.centre_classes.index(class_name)
        return self.centres[i], self.kept[i]


def _payload(result: ComponentMasks) -> dict[str, np.ndarray]:
    n = len(result.sample_ids)
    return {
        "masks_packed": np.packbits(result.masks.reshape(n, -1), axis=1),
        "counts": result.counts.astype(np.int64),
        "slots": result.slots.astype(np.int16),
        "sample_ids": np.asarray(result.sample_ids, dtype=str),
        "class_names": np.asarray(result.class_names, dtype=str),
        "centre_classes": np.asarray(result.centre_classes, dtype=str),
        "centres": result.centres.astype(np.float32),
        "kept": result.kept.astype(bool),
    }


def _digest(arrays: dict[str, np.ndarray], meta: str) -> str:
    digest = hashlib.sha256(meta.encode())
    for name in _ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write(path: Path, result: ComponentMasks) -> None:
    """Write into a temporary file beside ``path`` and rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _payload(result)
    meta = json.dumps({"key": result.key, "mask_shape": list(result.masks.shape)})
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez_compressed(file, meta=np.asarray(meta), digest=np.asarray(_digest(arrays, meta)), **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def read(path: Path, key: str, sample_ids: Sequence[str]) -> ComponentMasks | None:
    """The file's masks when it is intact and for this key and these samples; None (with a warning if damaged) otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _ARRAYS}
            meta, digest = str(data["meta"]), str(data["digest"])
        info = json.loads(meta)
        if digest != _digest(arrays, meta):
            raise ValueError("its sha256 does not match its contents")
        shape = tuple(info["mask_shape"])
        masks = np.unpackbits(arrays["masks_packed"], axis=1, count=int(np.prod(shape[1:]))).astype(bool).reshape(shape)
    except Exception as error:  # any damage (truncated zip, bad array, bad JSON) means: compute again
        warnings.warn(f"component mask cache file {path} is damaged ({type(error).__name__}: {error}); computing it again", stacklevel=3)
        return None
    if info.get("key") != key or arrays["sample_ids"].tolist() != list(sample_ids):
        return None
    return ComponentMasks(
        key=key, sample_ids=list(sample_ids), class_names=arrays["class_names"].tolist(), masks=masks,
        counts=arrays["counts"], slots=arrays["slots"], centre_classes=arrays["centre_classes"].tolist(),
        centres=arrays["centres"], kept=arrays["kept"], path=path, loaded=True,
    )
