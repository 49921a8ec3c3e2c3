"""The project's one config loader: YAML files, deep-merged overrides, dotted keys, friendly errors.

Every YAML the harness reads (sweep files, reported-number files, method presets) goes through
``load_yaml`` so a broken file always produces the same kind of message: the file, the line, and
what to fix.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

_MISSING = object()
# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-3 (no dot) as the string "1e-3".
_FLOAT_PATTERN = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem of a config: the key, the value found there and what was expected."""

    key: str
    value: Any
    expected: str

    def __str__(self) -> str:
        return f"{self.key}: got {show_value(self.value)}; expected {self.expected}"


class ConfigProblems(ConfigError):
    """Every problem found in one config, reported together, one line each."""

    def __init__(self, source: str, issues: list[ConfigIssue], what: str = "in the configuration"):
        self.source = source
        self.issues = list(issues)
        self.what = what
        count = len(self.issues)
        lines = [f"{source}: {count} problem{'s' if count != 1 else ''} {what}:"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))

    def __reduce__(self):  # rebuilt from its fields where it crosses processes (a Ray worker's error)
        return type(self), (self.source, self.issues, self.what)


def renamed(issues: list[ConfigIssue], name_of: Callable[[str], str]) -> list[ConfigIssue]:
    """The issues with each key as the user wrote it (``--set epochs``, ``base.method_config.epochs``)."""
    return [replace(issue, key=name_of(issue.key)) for issue in issues]


def show_value(value: Any) -> str:
    """repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (safe_load silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key]}); keep one", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """YAML text to data, rejecting duplicate keys and reading 1e-3 as a float."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from ``path``; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (expected a YAML file; check the path)")
    try:
        data = parse_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level is a {type(data).__name__}; expected a mapping of keys to values"
        )
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``override`` laid over ``base``; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def get_dotted(config: dict, key: str, default: Any = _MISSING) -> Any:
    """``config["a"]["b"]`` for ``key="a.b"``; ``default`` (or a ConfigError naming the key) if absent."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif default is _MISSING:
            raise ConfigError(f"config key {key!r} is not set (no {part!r} under it)")
        else:
            return default
    return node


def has_dotted(config: dict, key: str) -> bool:
    absent = object()
    return get_dotted(config, key, absent) is not absent


def set_dotted(config: dict, key: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``key="a.b"``, creating intermediate mappings."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"config key {key!r}: {part!r} holds {child!r}, not a mapping, so it cannot have sub-keys"
            )
        node = child
    node[parts[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"a.b=[1, 2]"`` -> ``("a.b", [1, 2])``; the value is read as YAML (so 3 is an int, null is None)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. method_config.epochs=3")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key, value
