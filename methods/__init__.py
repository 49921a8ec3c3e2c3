"""Method registry: every method is a name, built from a named preset plus overrides.

``register(name)`` decorates an ``AnomalyMethod`` subclass; ``build(name, preset, overrides, ...)``
constructs one; ``available()`` lists the names that import; ``preset_config`` resolves a config.
Method modules are imported lazily, one at a time: a module that fails to import (a missing
optional dependency, say) shows up in ``unavailable()`` with its reason instead of breaking the
registry for every other method.
"""

from __future__ import annotations

import copy
import importlib
import json
from typing import Any, Sequence

from methods.base import (
    AnomalyMethod,
    FeatureSpec,
    Prediction,
    RoutingRecord,
    summarise_routing,
    summarise_routing_records,
)

__all__ = [
    "AnomalyMethod",
    "FeatureSpec",
    "Prediction",
    "RoutingRecord",
    "MethodError",
    "available",
    "build",
    "get",
    "preset_config",
    "register",
    "summarise_routing",
    "summarise_routing_records",
    "unavailable",
]

# name -> module that registers it; imported on first use.
_KNOWN_MODULES = {
    "uniad": "methods.uniad",
    "moead": "methods.moead",
    "unilead": "methods.unilead",
    "patchcore": "methods.patchcore",
    "dinomaly": "methods.dinomaly",
    "anomalymoe": "methods.anomalymoe",
    "rd4ad": "methods.rd4ad",
    "unimmad": "methods.unimmad",
}
_REGISTRY: dict[str, type[AnomalyMethod]] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_LOADED = False


class MethodError(KeyError):
    """An unknown method, preset or override key; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register(name: str):
    """Class decorator: make ``cls`` buildable as ``name``."""

    def decorate(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
        if not (isinstance(cls, type) and issubclass(cls, AnomalyMethod)):
            raise TypeError(f"methods.register({name!r}) decorates AnomalyMethod subclasses, got {cls!r}")
        for preset in ("paper", "cpu"):
            if preset not in cls.presets:
                raise TypeError(f"method {name!r} ({cls.__name__}) has no {preset!r} preset; every method needs 'paper' and 'cpu'")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for name, module in _KNOWN_MODULES.items():
        if name in _REGISTRY:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # one broken method must not hide the others
            _IMPORT_ERRORS[name] = f"{module} failed to import: {type(exc).__name__}: {exc}"
            continue
        if name not in _REGISTRY:
            _IMPORT_ERRORS[name] = f"{module} imported but registered no method named {name!r}"


def available() -> list[str]:
    """Names of the methods that can be built here, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def unavailable() -> dict[str, str]:
    """Known methods that cannot be built here, with the reason."""
    _load_all()
    return dict(_IMPORT_ERRORS)


def get(name: str) -> type[AnomalyMethod]:
    """The registered class for ``name``; a clear error for unknown or broken methods."""
    _load_all()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _IMPORT_ERRORS:
        raise MethodError(f"method {name!r} is unavailable: {_IMPORT_ERRORS[name]}")
    raise MethodError(f"unknown method {name!r}; available: {', '.join(available()) or '(none)'}")


def preset_config(name: str, preset: str = "cpu", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved config: a deep copy of the preset with ``overrides`` merged key by key.

    Unknown presets and override keys are errors that list the valid ones. The result is a plain
    JSON-serialisable dict (tuples become lists).
    """
    cls = get(name)
    if preset not in cls.presets:
        raise MethodError(f"method {name!r} has no preset {preset!r}; presets: {', '.join(sorted(cls.presets))}")
    config = copy.deepcopy(cls.presets[preset])
    for key, value in (overrides or {}).items():
        if key not in config:
            raise MethodError(
                f"method {name!r} preset {preset!r} has no config key {key!r}; valid keys: {', '.join(sorted(config))}"
            )
        config[key] = copy.deepcopy(value)
    try:
        return json.loads(json.dumps(config))
    except TypeError as exc:
        raise MethodError(f"method {name!r} config is not JSON-serialisable ({exc}); use plain numbers, strings, lists") from None


def build(
    name: str,
    preset: str = "cpu",
    overrides: dict[str, Any] | None = None,
    *,
    feature_channels: Sequence[int] | None = None,
    feature_reductions: Sequence[int] | None = None,
) -> AnomalyMethod:
    """Construct method ``name`` from ``preset`` + ``overrides``.

    ``feature_channels``/``feature_reductions`` are the backbone's ``channels``/``reductions``;
    when omitted they are read from a randomly initialised backbone of the configured name.
    """
    cls = get(name)
    config = preset_config(name, preset, overrides)
    if feature_channels is None or feature_reductions is None:
        from harness.backbones import create_backbone

        backbone = create_backbone(config["backbone"], config["backbone_levels"], weights="random")
        feature_channels, feature_reductions = list(backbone.channels), list(backbone.reductions)
    return cls(config, list(feature_channels), list(feature_reductions))
