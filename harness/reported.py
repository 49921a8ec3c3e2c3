"""Numbers reported in papers, read from ``harness/reference/reported/*.yaml`` (issue #5, item 6).

Each entry names a method, a dataset (or ``any``), the method_config values it was reported for,
a metric, a value and its source (table). Values in files marked ``unit: percent`` are converted
to fractions, the scale our metrics use. These are claims of papers, shown beside our numbers and
always labelled as reported. Below the report and profiling, which both show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.config import ConfigError, load_yaml

REPORTED_DIR = Path(__file__).resolve().parent / "reference" / "reported"
_ENTRY_KEYS = {"source", "method", "dataset", "config", "metric", "value"}


@dataclass(frozen=True)
class ReportedValue:
    method: str
    dataset: str
    config: tuple  # sorted (key, value) pairs; lists frozen to tuples
    metric: str
    value: float
    source: str
    paper: str

    def applies_to(self, method: str, dataset: str, method_config: dict) -> bool:
        if method != self.method or self.dataset not in ("any", dataset):
            return False
        return all(_frozen(method_config.get(key)) == value for key, value in self.config)


@lru_cache(maxsize=4)
def load_reported(directory: str | Path = REPORTED_DIR) -> tuple[ReportedValue, ...]:
    """All reported values in ``directory``; a malformed entry is an error naming file and index."""
    values = []
    for path in sorted(Path(directory).glob("*.yaml")):
        data = load_yaml(path)
        scale = 0.01 if data.get("unit") == "percent" else 1.0
        for index, entry in enumerate(data.get("entries") or []):
            missing = _ENTRY_KEYS - set(entry) if isinstance(entry, dict) else _ENTRY_KEYS
            if missing:
                raise ConfigError(f"{path}: entries[{index}] lacks {sorted(missing)}; each entry needs {sorted(_ENTRY_KEYS)}")
            values.append(
                ReportedValue(
                    method=entry["method"],
                    dataset=entry["dataset"],
                    config=tuple(sorted((k, _frozen(v)) for k, v in (entry["config"] or {}).items())),
                    metric=entry["metric"],
                    value=float(entry["value"]) * scale,
                    source=str(entry["source"]),
                    paper=str(data.get("paper", path.stem)),
                )
            )
    return tuple(values)


def reported_for(method: str, dataset: str, method_config: dict, reported=None) -> dict[str, ReportedValue]:
    """metric -> the first reported value that applies to this configuration."""
    found: dict[str, ReportedValue] = {}
    for value in reported if reported is not None else load_reported():
        if value.metric not in found and value.applies_to(method, dataset, method_config):
            found[value.metric] = value
    return found


def reported_elsewhere(method: str, dataset: str, method_config: dict, reported=None) -> list[ReportedValue]:
    """What the papers report for this method on datasets other than ``dataset``: the values that
    apply to this configuration, or (when none does) every value reported for the method, whose
    ``config`` then says what it was reported for. One value per (dataset, metric), first wins."""
    values = [v for v in (reported if reported is not None else load_reported())
              if v.method == method and v.dataset not in ("any", dataset)]
    applicable = [v for v in values if v.applies_to(method, v.dataset, method_config)]
    chosen: dict[tuple[str, str], ReportedValue] = {}
    for value in applicable or values:
        chosen.setdefault((value.dataset, value.metric), value)
    return list(chosen.values())


def _frozen(value):
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value
