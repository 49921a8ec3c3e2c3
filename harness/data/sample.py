"""The one sample record every loader produces (../shared/spec/datasets-and-metrics.md, project decisions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NORMAL, ANOMALOUS = 0, 1


@dataclass(frozen=True)
class Sample:
    """One image (or one multi-modal scan) of a dataset, with paths rather than pixels.

    sample_id is the image's path relative to the dataset root without its extension
    (e.g. ``bottle/test/broken_large/000``): stable across machines and worker counts.
    images maps modality name ("rgb", "xyz") to a file; masks holds one file per mask channel:
    none for a normal image, one for MVTec AD / VisA / 3D-AD, one per defect for MVTec LOCO.
    """

    dataset: str
    class_name: str
    split: str  # "train" | "validation" | "test"
    defect_type: str  # "good" for normal images
    sample_id: str
    label: int  # NORMAL or ANOMALOUS
    images: dict[str, Path]
    masks: tuple[Path, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_anomalous(self) -> bool:
        return self.label == ANOMALOUS
