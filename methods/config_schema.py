"""A small declarative vocabulary for typing and ranging method config keys.

Every method class declares ``config_schema`` (key -> type) next to its presets, with the keys
every method shares declared once in ``methods/base.py``; ``method_config_issues`` checks a
preset with its overrides against it and returns every problem at once, each with the key, the
value found and what was expected (``harness.config.ConfigIssue``). Cross-key constraints (such
as top_k <= experts) are ``Rule`` entries in ``config_rules``.

    config_schema = {"epochs": Int(min=1), "lr": Real(positive=True), "routing": Choice("softmax", "top1"),
                     "bottlenecks": ListOf(Int(min=1)), "grad_clip": Nullable(Real(min=0))}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.config import ConfigIssue


class ConfigType:
    """One kind of value: ``accepts(value)`` and ``describe()`` (what an error says was expected)."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(minimum, maximum, positive: bool = False, below=None) -> str:
    parts = ["> 0"] if positive else []
    parts += [f">= {minimum}"] if minimum is not None else []
    parts += [f"<= {maximum}"] if maximum is not None else []
    parts += [f"< {below}"] if below is not None else []
    return " and ".join(parts)


def _within(value, minimum, maximum, positive: bool = False, below=None) -> bool:
    return not (
        (positive and value <= 0)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
        or (below is not None and value >= below)
    )


@dataclass(frozen=True)
class Int(ConfigType):
    """An integer (never a bool), optionally within [min, max]."""

    min: int | None = None
    max: int | None = None

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and _within(value, self.min, self.max)

    def describe(self) -> str:
        bounds = _bounds(self.min, self.max)
        return f"an integer {bounds}" if bounds else "an integer"


@dataclass(frozen=True)
class Real(ConfigType):
    """A finite number (ints accepted, bools and strings not): > 0 when positive, within [min, max], < below."""

    min: float | None = None
    max: float | None = None
    positive: bool = False
    below: float | None = None

    def accepts(self, value: Any) -> bool:
        return _is_real(value) and _within(value, self.min, self.max, self.positive, self.below)

    def describe(self) -> str:
        bounds = _bounds(self.min, self.max, self.positive, self.below)
        return f"a real number {bounds}" if bounds else "a real number"


class Bool(ConfigType):
    """true or false (not 0/1, not strings)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


class Str(ConfigType):
    """A non-empty string."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def describe(self) -> str:
        return "a non-empty string"


class Choice(ConfigType):
    """One of a fixed set of options."""

    def __init__(self, *options: Any):
        self.options = tuple(options)

    def accepts(self, value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in self.options)

    def describe(self) -> str:
        return "one of " + ", ".join(str(option) for option in self.options)


@dataclass(frozen=True)
class ListOf(ConfigType):
    """A list whose every item is ``item``; exactly ``length`` items, or at least ``min_length``."""

    item: ConfigType
    length: int | None = None
    min_length: int = 1

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list):
            return False
        size_ok = len(value) == self.length if self.length is not None else len(value) >= self.min_length
        return size_ok and all(self.item.accepts(v) for v in value)

    def describe(self) -> str:
        size = f"exactly {self.length}" if self.length is not None else f"at least {self.min_length}"
        return f"a list of {size} item(s), each {self.item.describe()}"


class OneOf(ConfigType):
    """Any of several types, e.g. OneOf(Int(min=1), Choice("auto"))."""

    def __init__(self, *types: ConfigType):
        self.types = types

    def accepts(self, value: Any) -> bool:
        return any(t.accepts(value) for t in self.types)

    def describe(self) -> str:
        return " or ".join(t.describe() for t in self.types)


class _Null(ConfigType):
    def accepts(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "null"


def Nullable(inner: ConfigType) -> ConfigType:  # noqa: N802 (reads as a type in a schema)
    """``inner`` or null."""
    return OneOf(inner, _Null())


@dataclass(frozen=True)
class Rule:
    """A constraint across keys: ``holds(config)`` must be true; reported on ``key``."""

    key: str
    holds: Callable[[Mapping[str, Any]], bool]
    expected: str


def config_issues(config: Mapping[str, Any], schema: Mapping[str, ConfigType], rules=(), prefix: str = "") -> list[ConfigIssue]:
    """Every key whose value its schema entry does not accept, then every broken rule.

    Keys without a schema entry are not judged here (tests/test_config_validation.py makes sure
    every preset key has one); rules run only when the keys they read are themselves valid.
    """
    issues = [
        ConfigIssue(prefix + key, value, schema[key].describe())
        for key, value in config.items()
        if key in schema and not schema[key].accepts(value)
    ]
    bad_keys = {issue.key for issue in issues}
    for rule in rules:
        if prefix + rule.key in bad_keys:
            continue
        try:
            holds = rule.holds(config)
        except (KeyError, TypeError, ZeroDivisionError):  # a rule over keys this config lacks or got wrong
            continue
        if not holds:
            issues.append(ConfigIssue(prefix + rule.key, config.get(rule.key), rule.expected))
    return issues


def method_config_issues(method: str, preset: str, overrides: Mapping[str, Any] | None, prefix: str = "method_config.") -> list[ConfigIssue]:
    """Problems of a method's preset with ``overrides`` laid over it: unknown keys, bad types, broken rules.

    The method and preset must exist (see harness.training.trial_config, which reports them).
    """
    import methods

    cls = methods.get(method)
    preset_values = cls.presets[preset]
    overrides = dict(overrides or {})
    valid = ", ".join(sorted(preset_values))
    issues = [
        ConfigIssue(prefix + key, key, f"an option of {method}'s {preset} preset: {valid}")
        for key in overrides
        if key not in preset_values
    ]
    resolved = {**preset_values, **{k: v for k, v in overrides.items() if k in preset_values}}
    return issues + config_issues(resolved, cls.config_schema, cls.config_rules, prefix)


__all__ = [
    "Bool",
    "Choice",
    "ConfigType",
    "Int",
    "ListOf",
    "Nullable",
    "OneOf",
    "Real",
    "Rule",
    "Str",
    "config_issues",
    "method_config_issues",
]
