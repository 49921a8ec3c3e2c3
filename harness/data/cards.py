"""Dataset cards: one YAML file per dataset with classes, modalities, splits and expected counts.

The schema is documented in datasets/README.md. Counts are nested
``class -> split -> defect_type -> number of images``; the key ``good`` holds normal images.
A card with ``counts_verified: false`` carries counts we could not confirm against a published
source: loaders then report a mismatch as a warning instead of failing.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import harness

SPLITS = ("train", "validation", "test")
GOOD = "good"

Counts = dict[str, dict[str, dict[str, int]]]  # class -> split -> defect_type -> n


class CardError(ValueError):
    """A dataset card is missing, unreadable or does not follow the schema in datasets/README.md."""


@dataclass(frozen=True)
class ClassCard:
    """One class of a dataset card: its kind and expected counts per split and defect type."""

    name: str
    kind: str = "object"  # object | texture
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def split_total(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())


@dataclass(frozen=True)
class DatasetCard:
    """A parsed dataset card (see datasets/README.md for every key)."""

    name: str
    title: str
    layout: str
    modalities: tuple[str, ...]
    classes: dict[str, ClassCard]
    licence: str = ""
    citation: str = ""
    homepage: str = ""
    counts_verified: bool = True
    notes: str = ""
    source: str = ""  # the file the card was read from, for error messages

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def counts(self) -> Counts:
        return {name: {s: dict(d) for s, d in c.counts.items()} for name, c in self.classes.items()}

    def with_counts(self, counts: Mapping, *, verified: bool = True) -> DatasetCard:
        """This card with its class list and counts replaced (fixtures and --expect use this)."""
        classes = {name: _class_from_mapping(name, {"counts": per_split}, self.source) for name, per_split in counts.items()}
        return DatasetCard(
            name=self.name, title=self.title, layout=self.layout, modalities=self.modalities,
            classes=classes, licence=self.licence, citation=self.citation, homepage=self.homepage,
            counts_verified=verified, notes=self.notes, source=self.source,
        )

    def to_mapping(self) -> dict:
        """The card as plain YAML-ready data (round-trips through card_from_mapping)."""
        return {
            "name": self.name, "title": self.title, "layout": self.layout,
            "modalities": list(self.modalities), "licence": self.licence, "citation": self.citation,
            "homepage": self.homepage, "counts_verified": self.counts_verified, "notes": self.notes,
            "classes": {n: {"kind": c.kind, "counts": {s: dict(d) for s, d in c.counts.items()}} for n, c in self.classes.items()},
        }


def cards_dir() -> Path:
    """The folder holding the bundled cards: ``harness.cards`` in a wheel, ``datasets/`` in a checkout."""
    try:
        bundled = Path(str(importlib.resources.files("harness.cards")))
        if bundled.is_dir():
            return bundled
    except ModuleNotFoundError:
        pass
    return Path(harness.__file__).resolve().parent.parent / "datasets"


def _class_from_mapping(name: str, data, source: str) -> ClassCard:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise CardError(f"{source}: classes.{name} must be a mapping with 'kind' and 'counts', got {data!r}")
    counts = data.get("counts") or {}
    if not isinstance(counts, Mapping):
        raise CardError(f"{source}: classes.{name}.counts must map split -> defect_type -> count, got {counts!r}")
    parsed: dict[str, dict[str, int]] = {}
    for split, per_defect in counts.items():
        if split not in SPLITS:
            raise CardError(f"{source}: classes.{name}.counts has split {split!r}; expected one of {', '.join(SPLITS)}")
        if not isinstance(per_defect, Mapping):
            raise CardError(f"{source}: classes.{name}.counts.{split} must map defect_type -> count, got {per_defect!r}")
        for defect, n in per_defect.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise CardError(f"{source}: classes.{name}.counts.{split}.{defect} must be a count >= 0, got {n!r}")
        parsed[split] = {str(d): int(n) for d, n in per_defect.items()}
    kind = str(data.get("kind", "object"))
    if kind not in ("object", "texture"):
        raise CardError(f"{source}: classes.{name}.kind is {kind!r}; expected 'object' or 'texture'")
    return ClassCard(name=str(name), kind=kind, counts=parsed)


def card_from_mapping(data, source: str = "<mapping>") -> DatasetCard:
    """Parse and check one card's YAML data; errors name the file and the key."""
    if not isinstance(data, Mapping):
        raise CardError(f"{source}: a dataset card must be a YAML mapping, got {type(data).__name__}")
    for key in ("name", "layout", "classes"):
        if key not in data:
            raise CardError(f"{source}: missing required key {key!r} (see datasets/README.md for the card schema)")
    classes_data = data["classes"]
    if not isinstance(classes_data, Mapping) or not classes_data:
        raise CardError(f"{source}: 'classes' must be a non-empty mapping of class name -> {{kind, counts}}")
    modalities = data.get("modalities") or ["rgb"]
    return DatasetCard(
        name=str(data["name"]),
        title=str(data.get("title", data["name"])),
        layout=str(data["layout"]),
        modalities=tuple(str(m) for m in modalities),
        classes={str(n): _class_from_mapping(str(n), c, source) for n, c in classes_data.items()},
        licence=str(data.get("licence", "")),
        citation=str(data.get("citation", "")).strip(),
        homepage=str(data.get("homepage", "")),
        counts_verified=bool(data.get("counts_verified", True)),
        notes=str(data.get("notes", "")).strip(),
        source=source,
    )


def load_card(path: str | Path) -> DatasetCard:
    """Read one card file."""
    from harness.config import ConfigError, load_yaml

    path = Path(path)
    if not path.is_file():
        raise CardError(f"dataset card {path} does not exist")
    try:
        data = load_yaml(path)  # duplicate keys and non-UTF-8 files are errors, as in every config
    except ConfigError as err:
        raise CardError(f"dataset card {err}") from None
    return card_from_mapping(data, str(path))


def counts_from(expected) -> Counts:
    """Counts from a DatasetCard, a card file path, or a ``class -> split -> defect -> n`` mapping."""
    if isinstance(expected, DatasetCard):
        return expected.counts()
    if isinstance(expected, (str, Path)):
        return load_card(expected).counts()
    if isinstance(expected, Mapping):
        probe = card_from_mapping({"name": "expected", "layout": "-", "classes": {c: {"counts": s} for c, s in expected.items()}})
        return probe.counts()
    raise CardError(f"expected counts must be a DatasetCard, a card path or a mapping, got {type(expected).__name__}")
