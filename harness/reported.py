"""Numbers reported in papers, read from ``harness/reference/reported/*.yaml`` (issue #5, item 6).

Each entry names a method, a dataset (or ``any``), the method_config values it was reported for,
a metric, a value and its source (table). Values in files marked ``unit: percent`` are converted
to fractions, the scale our metrics use. These are claims of papers, shown beside our numbers and
always labelled as reported. Below the report and profiling, which both show them.

Reference checks (issue 13 item 4, report/reference_check.py) read two optional fields. A file's
``reference_check`` header gives ``tolerance`` (points in the file's unit, either side of a value;
DEFAULT_TOLERANCE_POINTS where absent) and ``not_comparable``: one reason for every entry, or a
mapping of source to reason, for numbers whose protocol ours does not follow (the file's caveats).
An entry's own ``tolerance`` overrides the file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.config import ConfigError, load_yaml

REPORTED_DIR = Path(__file__).resolve().parent / "reference" / "reported"
_ENTRY_KEYS = {"source", "method", "dataset", "config", "metric", "value"}
_CHECK_KEYS = {"tolerance", "not_comparable"}
DEFAULT_TOLERANCE_POINTS = 1.0  # percent points either side, as MLPerf states a reference's tolerance


@dataclass(frozen=True)
class ReportedValue:
    method: str
    dataset: str
    config: tuple  # sorted (key, value) pairs; lists frozen to tuples
    metric: str
    value: float
    source: str
    paper: str
    tolerance: float = DEFAULT_TOLERANCE_POINTS / 100  # at the same scale as value
    not_comparable: str = ""  # why no run of ours can be checked against it ("" where one can)

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
        entries = data.get("entries") or []
        file_tolerance, reasons = _reference_check(path, data.get("reference_check") or {}, entries)
        for index, entry in enumerate(entries):
            missing = _ENTRY_KEYS - set(entry) if isinstance(entry, dict) else _ENTRY_KEYS
            if missing:
                raise ConfigError(f"{path}: entries[{index}] lacks {sorted(missing)}; each entry needs {sorted(_ENTRY_KEYS)}")
            tolerance = _tolerance(entry.get("tolerance", file_tolerance), f"{path}: entries[{index}].tolerance")
            values.append(
                ReportedValue(
                    method=entry["method"],
                    dataset=entry["dataset"],
                    config=tuple(sorted((k, _frozen(v)) for k, v in (entry["config"] or {}).items())),
                    metric=entry["metric"],
                    value=float(entry["value"]) * scale,
                    source=str(entry["source"]),
                    paper=str(data.get("paper", path.stem)),
                    tolerance=tolerance * scale,
                    not_comparable=reasons.get(str(entry["source"]), reasons.get(None, "")),
                )
            )
    return tuple(values)


def _reference_check(path: Path, header, entries: list) -> tuple[float, dict]:
    """The file's tolerance (points) and its not-comparable reasons by source (None: every entry)."""
    where = f"{path}: reference_check"
    if not isinstance(header, dict) or set(header) - _CHECK_KEYS:
        raise ConfigError(f"{where} must be a mapping with keys among {sorted(_CHECK_KEYS)}, got {header!r}")
    tolerance = _tolerance(header.get("tolerance", DEFAULT_TOLERANCE_POINTS), f"{where}.tolerance")
    reasons = header.get("not_comparable") or {}
    if isinstance(reasons, str):
        return tolerance, {None: reasons}
    sources = {str(e.get("source")) for e in entries if isinstance(e, dict)}
    if not isinstance(reasons, dict) or not all(isinstance(r, str) and r.strip() for r in reasons.values()):
        raise ConfigError(f"{where}.not_comparable must be a reason (text) or a mapping of source to reason, got {reasons!r}")
    unknown = sorted(set(map(str, reasons)) - sources)
    if unknown:
        raise ConfigError(f"{where}.not_comparable names sources no entry has: {unknown}; sources: {sorted(sources)}")
    return tolerance, {str(source): reason for source, reason in reasons.items()}


def _tolerance(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{where} must be a non-negative number of points, got {value!r}")
    return float(value)


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
