"""MVTec LOCO defect saturation from ``defects_config.json`` (spec section 4.3).

Each entry is ``{defect_name, pixel_value, saturation_threshold, relative_saturation}``. A defect
of area A (pixels at evaluation resolution) saturates at

    S = max(floor(saturation_threshold * A), 1)   when relative_saturation,
    S = min(saturation_threshold, A)              otherwise,

as the official MVTec LOCO AD evaluation v2.0 computes it (``src/image.py``,
``GroundTruthChannel.get_saturation_area``: ``int(threshold * area)``, i.e. rounded down). The
official code divides by zero when threshold * A < 1 (its sPRO is then 1 wherever a pixel is hit
and NaN elsewhere); S = 1 there agrees with it wherever it is defined.

The entries are checked as the official ``DefectConfig`` checks them (pixel_value in 1..255; a
relative threshold a real number in (0, 1]; an absolute one an integer), plus what the official
code leaves to chance: every key present and typed, pixel values unique (the official lookup keeps
the last entry of a repeated value), absolute thresholds at least 1 (0 divides by zero).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

STRUCTURAL, LOGICAL, GOOD = "structural_anomalies", "logical_anomalies", "good"
CONFIG_KEYS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


@dataclass(frozen=True)
class DefectSaturation:
    """One ``defects_config.json`` entry."""

    defect_name: str
    pixel_value: int
    saturation_threshold: int | float  # a fraction in (0, 1] when relative, else an integer pixel count
    relative_saturation: bool

    def __post_init__(self) -> None:
        problems = defects_config_problems([self.__dict__], "DefectSaturation")
        if problems:
            raise ValueError(problems[0])

    def saturation_pixels(self, areas: np.ndarray) -> np.ndarray:
        """S_d for defects of the given areas (pixels at evaluation resolution), an integer count."""
        areas = np.asarray(areas, dtype=np.float64)
        if self.relative_saturation:
            # floor of the float64 product, as Python's int() on it in the official script
            return np.maximum(np.floor(self.saturation_threshold * areas), 1.0)
        return np.minimum(float(self.saturation_threshold), areas)


DefectsConfig = Mapping[int, DefectSaturation]


@dataclass(frozen=True)
class DefectPixels:
    """sPRO regions of a stack: flat pixel indices, their defect id (>= 1) and S per defect id."""

    pixel_index: np.ndarray
    defect_id: np.ndarray
    saturation: np.ndarray  # indexed by defect id; entry 0 unused
    count: int


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (float, np.floating))


def defects_config_problems(entries: Any, origin: str) -> list[str]:
    """Every problem of a parsed ``defects_config.json``, each naming origin, the defect, the key,
    the value and what was expected; empty when the config is valid."""
    if not isinstance(entries, (list, tuple)):
        return [f"{origin}: expected a JSON list of defect entries, got {type(entries).__name__}"]
    if not entries:
        return [f"{origin}: the list of defect entries is empty; sPRO needs at least one defect"]
    problems: list[str] = []
    first_entry: dict[int, str] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            problems.append(f"{origin}: entry {position}: expected an object with keys {', '.join(CONFIG_KEYS)}, got {entry!r}")
            continue
        name = entry.get("defect_name")
        where = f"{origin}: entry {position} (defect {name!r})"
        missing = [key for key in CONFIG_KEYS if key not in entry]
        for key in missing:
            problems.append(f"{where}: key {key!r} is missing; every entry needs {', '.join(CONFIG_KEYS)}")
        if "defect_name" not in missing and not (isinstance(name, str) and name):
            problems.append(f"{where}: defect_name = {name!r}; expected a non-empty string")
        value = entry.get("pixel_value")
        if "pixel_value" not in missing:
            if not _is_integer(value) or not 1 <= value <= 255:
                problems.append(f"{where}: pixel_value = {value!r}; expected an integer in 1..255 (the mask value of this defect)")
            elif int(value) in first_entry:
                problems.append(f"{where}: pixel_value = {value!r} is already used by entry {first_entry[int(value)]}; "
                                "expected each pixel value once (the official evaluation would silently keep the last entry)")
            else:
                first_entry[int(value)] = f"{position} (defect {name!r})"
        relative = entry.get("relative_saturation")
        if "relative_saturation" not in missing and not isinstance(relative, (bool, np.bool_)):
            problems.append(f"{where}: relative_saturation = {relative!r}; expected true or false")
            continue
        if "saturation_threshold" in missing or "relative_saturation" in missing:
            continue
        threshold = entry["saturation_threshold"]
        if relative:
            if not _is_real(threshold) or not 0.0 < threshold <= 1.0:
                problems.append(
                    f"{where}: saturation_threshold = {threshold!r} with relative_saturation true; expected a real number "
                    "in (0, 1] written with a decimal point (e.g. 0.5 or 1.0), the fraction of the defect's area, as the "
                    "official evaluation requires"
                )
        elif not _is_integer(threshold) or threshold < 1:
            problems.append(
                f"{where}: saturation_threshold = {threshold!r} with relative_saturation false; expected an integer "
                "number of pixels >= 1 (written without a decimal point), as the official evaluation requires"
            )
    return problems


def load_defects_config(source: str | Path | Iterable[Mapping] | Mapping[int, DefectSaturation]) -> dict[int, DefectSaturation]:
    """Defect saturations keyed by pixel value, from a path to ``defects_config.json`` or its parsed list.

    A config the official evaluation would reject (see ``defects_config_problems``) is a
    ``ValueError`` listing every problem.
    """
    if isinstance(source, Mapping) and all(isinstance(v, DefectSaturation) for v in source.values()):
        return dict(source)
    origin = "defects_config"
    if isinstance(source, (str, Path)):
        origin = str(source)
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read LOCO defects config {origin}: {error}") from error
    elif not isinstance(source, (list, tuple, Mapping)):
        source = list(source)
    problems = defects_config_problems(source, origin)
    if problems:
        raise ValueError("invalid MVTec LOCO defects config:\n" + "\n".join(f"  - {p}" for p in problems))
    config: dict[int, DefectSaturation] = {}
    for entry in source:
        threshold = entry["saturation_threshold"]
        config[int(entry["pixel_value"])] = DefectSaturation(
            defect_name=str(entry["defect_name"]),
            pixel_value=int(entry["pixel_value"]),
            saturation_threshold=float(threshold) if entry["relative_saturation"] else int(threshold),
            relative_saturation=bool(entry["relative_saturation"]),
        )
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
