"""The configuration of one trial: what `harness train` takes and what a sweep expands into.

``trial_issues`` is the one validation of a trial's configuration, used by `harness train`,
`harness profile` (its method part) and every trial of `harness sweep` (also with --dry-run)
before anything starts: method and preset known, every method config key typed and ranged
against the method's schema (methods/config_schema.py), dataset known, data root present, and
the classes present in the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, ConfigIssue, ConfigProblems

TRIAL_KEYS = ("method", "preset", "dataset", "data_root", "classes", "expect", "seed", "method_config")
EMBEDDED = "embedded"


def trial_issues(config: Mapping[str, Any]) -> list[ConfigIssue]:
    """Every problem of one trial config (keys as in the config: ``method_config.epochs``, ``classes``)."""
    issues = [ConfigIssue(key, config[key], f"one of the trial keys {', '.join(TRIAL_KEYS)}")
              for key in config if key not in TRIAL_KEYS and not str(key).startswith("_")]
    issues += method_issues(config.get("method"), config.get("preset", "cpu"), config.get("method_config"))
    issues += dataset_issues(config.get("dataset", EMBEDDED), config.get("data_root"), config.get("classes"), config.get("expect"))
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        issues.append(ConfigIssue("seed", seed, "an integer >= 0"))
    return issues


def method_issues(method: Any, preset: Any, method_config: Any) -> list[ConfigIssue]:
    """The method is registered and importable, the preset is one of its, the method config fits its schema."""
    import methods
    from methods.config_schema import method_config_issues

    broken = methods.unavailable()
    if method in broken:
        return [ConfigIssue("method", method, f"a method that can be built here ({broken[method]})")]
    if method not in methods.available():
        return [ConfigIssue("method", method, f"one of {', '.join(methods.available())}")]
    presets = sorted(methods.get(method).presets)
    if preset not in presets:
        return [ConfigIssue("preset", preset, f"one of {method}'s presets: {', '.join(presets)}")]
    if method_config is None:
        method_config = {}
    if not isinstance(method_config, Mapping):
        return [ConfigIssue("method_config", method_config, "a mapping of method options, e.g. {epochs: 3}")]
    return method_config_issues(method, preset, method_config)


def dataset_issues(dataset: Any, data_root: Any, classes: Any, expect: Any) -> list[ConfigIssue]:
    """The dataset is known, its root exists (every dataset but the generated ones needs one), the classes are its."""
    from harness.data.registry import dataset_names

    names = dataset_names()
    if dataset not in names:
        return [ConfigIssue("dataset", dataset, f"one of {', '.join(names)}")]
    issues = _path_issues(dataset, data_root, expect)
    if classes is None or issues:
        return issues
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes):
        return [ConfigIssue("classes", classes, "null (all classes) or a list of class names")]
    return _class_issues(dataset, data_root, list(classes), expect)


def _path_issues(dataset: str, data_root: Any, expect: Any) -> list[ConfigIssue]:
    from harness.data.registry import BUILT_ON_FIRST_USE

    issues = []
    if data_root is None and dataset not in BUILT_ON_FIRST_USE:
        issues.append(ConfigIssue("data_root", None, f"the dataset's root folder: dataset {dataset} needs --data-root PATH"))
    elif data_root is not None and (not isinstance(data_root, (str, Path)) or not Path(data_root).expanduser().is_dir()):
        issues.append(ConfigIssue("data_root", data_root, "an existing folder (relative paths are read from the current directory)"))
    if expect is not None and (not isinstance(expect, (str, Path)) or not Path(expect).expanduser().is_file()):
        issues.append(ConfigIssue("expect", expect, "an existing dataset card file (YAML)"))
    return issues


def _class_issues(dataset: str, data_root: Any, classes: list[str], expect: Any) -> list[ConfigIssue]:
    from harness.data.cards import CardError
    from harness.data.registry import dataset_classes

    try:
        known = dataset_classes(dataset, data_root, expect)
    except (CardError, ConfigError) as error:
        return [ConfigIssue("expect", expect, f"a readable dataset card ({error})")]
    where = f"the class folders of {data_root}" if dataset == "generic" else f"dataset {dataset}"
    return [ConfigIssue("classes", name, f"a class of {where}: {', '.join(known) or '(none found)'}")
            for name in classes if name not in known]


def check_trial(config: Mapping[str, Any], source: str, name_of=None) -> None:
    """Raise ConfigProblems listing every problem of the trial config; ``name_of`` renames keys for the user."""
    from harness.config import renamed

    issues = trial_issues(config)
    if issues:
        raise ConfigProblems(source, renamed(issues, name_of) if name_of else issues)


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
        """A validated trial (check_trial: every problem at once); relative paths are made absolute."""
        check_trial(config, "trial config")
        seed = config.get("seed", 0)
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
