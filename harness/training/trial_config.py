"""The configuration of one trial: what `harness train` takes and what a sweep expands into.

``trial_issues`` is the one validation of a trial's configuration, used by `harness train`,
`harness profile` (its method part) and every trial of `harness sweep` (also with --dry-run)
before anything starts: method and preset known, every method config key typed and ranged
against the method's schema (methods/config_schema.py), dataset known, data root present, the
classes present in the dataset, and each dataset option one its layout takes (Real-IAD's views,
json_dir, image_dir: harness.data.layouts.real_iad.OPTIONS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, ConfigIssue, ConfigProblems

TRIAL_KEYS = ("method", "preset", "dataset", "data_root", "classes", "expect", "dataset_options", "seed", "method_config")
EMBEDDED = "embedded"


def trial_issues(config: Mapping[str, Any]) -> list[ConfigIssue]:
    """Every problem of one trial config (keys as in the config: ``method_config.epochs``, ``classes``)."""
    issues = [ConfigIssue(key, config[key], f"one of the trial keys {', '.join(TRIAL_KEYS)}")
              for key in config if key not in TRIAL_KEYS and not str(key).startswith("_")]
    issues += method_issues(config.get("method"), config.get("preset", "cpu"), config.get("method_config"))
    issues += dataset_issues(config.get("dataset", EMBEDDED), config.get("data_root"), config.get("classes"), config.get("expect"),
                             config.get("dataset_options"))
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
    issues = method_config_issues(method, preset, method_config)
    cls = methods.get(method)
    return issues or backbone_issues({**cls.presets[preset], **method_config}, needs_backbone=cls.input_kind == "features")


def backbone_issues(resolved: Mapping[str, Any], needs_backbone: bool = True) -> list[ConfigIssue]:
    """The resolved method config's backbone, levels and token stride exist (harness.backbones.backbone_config_problems)."""
    from harness.backbones import backbone_config_problems

    return [ConfigIssue(f"method_config.{key}", value, expected)
            for key, value, expected in backbone_config_problems(dict(resolved), needs_backbone)]


def dataset_arguments(config: Mapping[str, Any]) -> dict:
    """The dataset keys of a trial config as keyword arguments of ``load_dataset`` and ``check_trial_dataset``."""
    return {"name": config.get("dataset", EMBEDDED), "root": config.get("data_root"), "classes": config.get("classes"),
            "expected": config.get("expect"), "options": config.get("dataset_options")}


def dataset_issues(dataset: Any, data_root: Any, classes: Any, expect: Any, options: Any = None) -> list[ConfigIssue]:
    """The dataset is known, its root exists (every dataset but the generated ones needs one), the classes are
    its, and its layout takes the options given."""
    from harness.data.registry import dataset_names

    names = dataset_names()
    if dataset not in names:
        return [ConfigIssue("dataset", dataset, f"one of {', '.join(names)}")]
    issues = _path_issues(dataset, data_root, expect) + option_issues(dataset, options)
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


def option_issues(dataset: str, options: Any) -> list[ConfigIssue]:
    """Each option checked alone by the layout's ``resolve_options``, so its message names that option's key."""
    if options is None:
        return []
    if not isinstance(options, Mapping):
        return [ConfigIssue("dataset_options", options, "a mapping of the dataset's layout options, e.g. {views: [C1]}")]
    resolve = _options_resolver(dataset)
    if resolve is None:
        return [ConfigIssue(f"dataset_options.{key}", value, f"no option: dataset {dataset} takes no dataset options")
                for key, value in options.items()]
    issues = []
    for key, value in options.items():
        try:
            resolve({key: value})
        except ValueError as error:
            issues.append(ConfigIssue(f"dataset_options.{key}", value, f"an option dataset {dataset} takes ({error})"))
    return issues


def with_canonical_options(config: Mapping[str, Any]) -> dict:
    """The config with its dataset options as the layout reads them (views in C1..C5 order, as a list), so two
    spellings of one choice share a run id, and without the key when there are none, so a run without
    options keeps the id it had before options existed. Options that do not resolve stay as given, for
    validation to name."""
    config = dict(config)
    options = config.pop("dataset_options", None)
    resolve = _options_resolver(str(config.get("dataset", EMBEDDED))) if isinstance(options, Mapping) and options else None
    try:
        resolved = resolve(dict(options)) if resolve is not None else None
    except ValueError:
        resolved = None
    if resolved is not None:
        options = {key: list(resolved[key]) if isinstance(resolved[key], tuple) else resolved[key] for key in options}
    if options or (options is not None and not isinstance(options, Mapping)):
        config["dataset_options"] = options
    return config


def _options_resolver(dataset: str):
    """The layout's ``resolve_options``, or None for a layout without options (or an unknown dataset)."""
    from harness.data.cards import CardError
    from harness.data.layouts import reader
    from harness.data.registry import GENERIC, get_card

    try:
        layout = GENERIC if dataset == GENERIC else get_card(dataset).layout
    except CardError:
        return None
    return getattr(reader(layout), "resolve_options", None)


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
    dataset_options: dict = field(default_factory=dict)  # the layout's options (Real-IAD: views, json_dir, image_dir)
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
            dataset_options=with_canonical_options(config).get("dataset_options", {}),
            seed=seed,
            method_config=dict(config.get("method_config") or {}),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["classes"] = list(self.classes) if self.classes else None
        return data
