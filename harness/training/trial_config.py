"""The configuration of one trial: what `harness train` takes and what a sweep expands into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

TRIAL_KEYS = ("method", "preset", "dataset", "data_root", "classes", "expect", "seed", "method_config")


class TrialConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TrialConfig:
    method: str
    preset: str = "cpu"
    dataset: str = "embedded"
    data_root: str | None = None
    classes: tuple[str, ...] | None = None
    expect: str | None = None  # a card YAML whose classes and counts replace the bundled card's
    seed: int = 0
    method_config: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: dict) -> TrialConfig:
        unknown = sorted(set(config) - set(TRIAL_KEYS) - {k for k in config if k.startswith("_")})
        if unknown:
            raise TrialConfigError(f"unknown trial config key(s) {unknown}; expected some of {list(TRIAL_KEYS)}")
        if "method" not in config:
            raise TrialConfigError("trial config needs 'method' (see `harness train --help` for the list)")
        seed = config.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TrialConfigError(f"'seed' must be an integer, got {seed!r}")
        root = config.get("data_root")
        classes = config.get("classes")
        return cls(
            method=str(config["method"]),
            preset=str(config.get("preset", "cpu")),
            dataset=str(config.get("dataset", "embedded")),
            # Ray workers change directory: paths are made absolute where the config is read.
            data_root=str(Path(root).expanduser().resolve()) if root else None,
            classes=tuple(classes) if classes else None,
            expect=str(Path(config["expect"]).expanduser().resolve()) if config.get("expect") else None,
            seed=seed,
            method_config=dict(config.get("method_config") or {}),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["classes"] = list(self.classes) if self.classes else None
        return data
