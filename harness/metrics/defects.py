"""MVTec LOCO defect saturation from ``defects_config.json`` (spec section 4.3).

Each entry is ``{defect_name, pixel_value, saturation_threshold, relative_saturation}``; a defect
of area A saturates at S = saturation_threshold * A when relative, else min(saturation_threshold, A).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

STRUCTURAL, LOGICAL, GOOD = "structural_anomalies", "logical_anomalies", "good"


@dataclass(frozen=True)
class DefectSaturation:
    """One ``defects_config.json`` entry."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def saturation_pixels(self, areas: np.ndarray) -> np.ndarray:
        """S_d for defects of the given areas (pixels at evaluation resolution)."""
        areas = np.asarray(areas, dtype=np.float64)
        if self.relative_saturation:
            return self.saturation_threshold * areas
        return np.minimum(float(self.saturation_threshold), areas)


DefectsConfig = Mapping[int, DefectSaturation]


@dataclass(frozen=True)
class DefectPixels:
    """sPRO regions of a stack: flat pixel indices, their defect id (>= 1) and S per defect id."""

    pixel_index: np.ndarray
    defect_id: np.ndarray
    saturation: np.ndarray  # indexed by defect id; entry 0 unused
    count: int


def load_defects_config(source: str | Path | Iterable[Mapping] | Mapping[int, DefectSaturation]) -> dict[int, DefectSaturation]:
    """Defect saturations keyed by pixel value, from a path to ``defects_config.json`` or its parsed list."""
    if isinstance(source, Mapping) and all(isinstance(v, DefectSaturation) for v in source.values()):
        return dict(source)
    origin = "defects_config"
    if isinstance(source, (str, Path)):
        origin = str(source)
        try:
            source = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read LOCO defects config {origin}: {error}") from error
    config: dict[int, DefectSaturation] = {}
    for position, entry in enumerate(source):
        try:
            saturation = DefectSaturation(
                defect_name=str(entry["defect_name"]),
                pixel_value=int(entry["pixel_value"]),
                saturation_threshold=float(entry["saturation_threshold"]),
                relative_saturation=bool(entry["relative_saturation"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{origin}: entry {position} ({entry!r}) must have defect_name, pixel_value, "
                f"saturation_threshold and relative_saturation ({error})"
            ) from error
        if saturation.saturation_threshold <= 0:
            raise ValueError(f"{origin}: defect {saturation.defect_name!r} has saturation_threshold <= 0")
        config[saturation.pixel_value] = saturation
    return config


def defect_pixels(members, channels, config: DefectsConfig, defect_ids, describe, name: str) -> DefectPixels:
    """sPRO regions of the images ``members`` of a batch, stacked in that order.

    channels[i] is image i's (C, H, W) mask stack; a channel's defect id comes from
    ``defect_ids[i][c]`` or, when that is None, from the channel's one non-zero value.
    """
    pixel_index, defect_id, saturation = [], [], [0.0]
    for position, i in enumerate(members):
        image_pixels = int(np.prod(channels[i].shape[1:]))
        ids_here = None if defect_ids is None else list(defect_ids[i])
        for c, channel in enumerate(channels[i]):
            pixels = np.flatnonzero(channel)
            if len(pixels) == 0:
                continue
            if ids_here is not None:
                value = int(ids_here[c])
            else:
                values = np.unique(channel[channel != 0])
                if len(values) != 1 or channel.dtype == bool:
                    raise ValueError(
                        f"{describe(i)}: cannot read the defect id of mask channel {c} "
                        f"(values {values[:5].tolist()}); pass defect_ids"
                    )
                value = int(values[0])
            if value not in config:
                raise ValueError(
                    f"{describe(i)}: mask channel {c} has defect id {value}, which class {name!r}'s "
                    f"defects_config does not list (ids {sorted(config)})"
                )
            pixel_index.append(pixels + position * image_pixels)
            defect_id.append(np.full(len(pixels), len(saturation), dtype=np.int64))
            saturation.append(float(config[value].saturation_pixels(len(pixels))))
    if not pixel_index:
        return DefectPixels(np.zeros(0, np.intp), np.zeros(0, np.int64), np.zeros(1), 0)
    return DefectPixels(np.concatenate(pixel_index), np.concatenate(defect_id), np.array(saturation), len(saturation) - 1)
