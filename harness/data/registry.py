"""Datasets by name: the cards, and ``load_dataset`` which reads a root through the card's layout.

Binding decisions (../shared/spec/datasets-and-metrics.md): the dataset is named in config and
never inferred from a folder name; class and split counts are checked against the card; the
validation split is never merged into training; each root is fingerprinted from relative paths
and sizes for the run record.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.data.cards import SPLITS, CardError, Counts, DatasetCard, cards_dir, counts_from, load_card
from harness.data.layouts import LayoutScan, Problem, reader, subfolders
from harness.data.sample import Sample

GENERIC = "generic"
EMBEDDED = "embedded"
EMBEDDED_V3 = "embedded_v3"  # generator v3, opt-in (harness/data/embedded.py)
EMBEDDED_3D = "embedded_3d"
VALIDATION_SETS = ("validation_a", "validation_b")  # tuning data, never a test set (harness/data/validation_sets.py)
BUILT_ON_FIRST_USE = (EMBEDDED, EMBEDDED_V3, EMBEDDED_3D, *VALIDATION_SETS)  # generated datasets: no root needed


class DatasetError(ValueError):
    """A dataset root does not match its card: the message lists every problem found."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass
class DatasetIndex:
    """Every sample of a dataset root, in a deterministic order, plus what belongs with them."""

    name: str
    root: Path
    card: DatasetCard
    samples: list[Sample]
    defects_config: dict[str, list[dict]] = field(default_factory=dict)  # MVTec LOCO: class -> entries
    warnings: list[Problem] = field(default_factory=list)
    aux_files: list[Path] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # the layout's options as read; record them with the run

    @property
    def classes(self) -> list[str]:
        present = {s.class_name for s in self.samples}
        return [c for c in self.card.class_names if c in present]

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        return [s for s in self.samples if s.split == name]

    def counts(self) -> Counts:
        return count_samples(self.samples)

    def fingerprint(self) -> str:
        """sha256 of the sorted relative paths and byte sizes of every file the index uses."""
        files = {p for s in self.samples for p in (*s.images.values(), *s.masks)} | set(self.aux_files)
        return fingerprint_files(self.root, files)


def fingerprint_files(root: Path, files) -> str:
    """sha256 over sorted ``relative/path<TAB>size`` lines: cheap (stat only) and machine-independent."""
    digest = hashlib.sha256()
    for rel, size in sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in files):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def count_samples(samples: list[Sample]) -> Counts:
    counts: Counts = {}
    for (cls, split, defect), n in sorted(Counter((s.class_name, s.split, s.defect_type) for s in samples).items()):
        counts.setdefault(cls, {}).setdefault(split, {})[defect] = n
    return counts


def list_cards() -> list[DatasetCard]:
    """Every bundled dataset card, sorted by name."""
    return sorted((load_card(p) for p in cards_dir().glob("*.yaml")), key=lambda c: c.name)


def get_card(name: str) -> DatasetCard:
    """The bundled card of a dataset; the error lists the known names."""
    path = cards_dir() / f"{name}.yaml"
    if not path.is_file():
        known = [c.name for c in list_cards()] + [GENERIC]
        raise CardError(f"no dataset card named {name!r} in {cards_dir()}; known datasets: {', '.join(known)}")
    return load_card(path)


def dataset_names() -> list[str]:
    """Every dataset a config can name: the bundled cards, then generic."""
    return [c.name for c in list_cards()] + [GENERIC]


def dataset_classes(name: str, root: str | Path | None = None, expected=None) -> list[str]:
    """The classes a config may choose: the card's (or the --expect card's); generic: the root's class folders."""
    if name == GENERIC:
        from harness.data.layouts.generic import discover_classes

        return discover_classes(Path(root).expanduser()) if root is not None else []
    if expected is not None:
        return list(counts_from(expected))
    return get_card(name).class_names


@dataclass
class DatasetScan:
    """A read root before judging it: what verify reports and load_dataset raises on."""

    card: DatasetCard
    root: Path
    classes: list[str]
    layout: LayoutScan
    problems: list[Problem]  # structure, folders and counts; errors and warnings
    options: dict = field(default_factory=dict)  # the layout's options as read (Real-IAD: views, json_dir, image_dir)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def scan_dataset(name: str, root: str | Path, *, classes=None, expected=None, options=None) -> DatasetScan:
    """Read a root through its card's layout and collect every structural and count problem.

    options: the layout's options (harness.data.layouts.real_iad.OPTIONS); the defaults fill the rest.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    card = _card_for(name, root, expected)
    chosen = _chosen_classes(card, classes)
    layout = reader(card.layout)
    resolved = _layout_options(card, layout, options)
    scan = layout.scan(root, card.name, chosen, **({"options": resolved} if resolved else {}))
    scan.samples.sort(key=lambda s: (chosen.index(s.class_name), SPLITS.index(s.split), s.sample_id))
    problems = list(scan.problems)
    if card.layout != GENERIC:
        problems += _unknown_folders(root, card, layout.ROOT_EXTRAS)
        problems += _count_problems(card, chosen, count_samples(scan.samples), scan, root)
    return DatasetScan(card, root, chosen, scan, problems, resolved)


def _layout_options(card: DatasetCard, layout, given) -> dict:
    """The layout's options with the given ones put in; {} for a layout without options."""
    resolve = getattr(layout, "resolve_options", None)
    if resolve is None:
        if given:
            raise DatasetError(f"dataset {card.name!r} (layout {card.layout}) takes no options; got {', '.join(map(repr, given))}")
        return {}
    try:
        return resolve(dict(given or {}))
    except ValueError as err:
        raise DatasetError(f"dataset {card.name!r}: {err}") from None


def load_dataset(name: str, root: str | Path | None = None, *, classes=None, check_counts: bool = True, expected=None,
                 options=None) -> DatasetIndex:
    """Index a dataset root read as the named dataset; raise DatasetError listing every problem.

    classes restricts to a subset; expected (a card, card path or counts mapping) replaces the
    card's classes and counts; options are the layout's options (Real-IAD: views, json_dir,
    image_dir); name "generic" discovers classes and only reports counts.
    """
    if root is None:
        root = _default_root(name)
    scan = scan_dataset(name, root, classes=classes, expected=expected, options=options)
    errors = [p for p in scan.errors if check_counts or p.kind != "count-mismatch"]
    if errors:
        lines = "\n".join(f"  - {p.message}" for p in errors)
        raise DatasetError(f"dataset {scan.card.name!r} at {scan.root}: {len(errors)} problem(s):\n{lines}\n"
                           f"Run `harness datasets verify {scan.root} --dataset {name}` for the full report.", errors)
    return DatasetIndex(
        name=scan.card.name, root=scan.root, card=scan.card, samples=scan.layout.samples,
        defects_config=scan.layout.defects_config, aux_files=scan.layout.aux_files,
        warnings=[p for p in scan.problems if p not in errors], options=scan.options,
    )


def _default_root(name: str) -> Path:
    if name == EMBEDDED:
        from harness.data.embedded import prepare_embedded  # built on first use; see harness/data/embedded.py

        return prepare_embedded()
    if name == EMBEDDED_V3:
        from harness.data.embedded import prepare_embedded_v3

        return prepare_embedded_v3()
    if name == EMBEDDED_3D:
        from harness.data.embedded_3d import prepare_embedded_3d  # built on first use; see harness/data/embedded_3d.py

        return prepare_embedded_3d()
    if name in VALIDATION_SETS:
        from harness.data.validation_sets import prepare_validation_set

        return prepare_validation_set(name)
    raise DatasetError(f"dataset {name!r} needs a root folder: pass root=... (the folder holding the class folders); "
                       f"only {', '.join(map(repr, BUILT_ON_FIRST_USE))} are built automatically")


def _card_for(name: str, root: Path, expected) -> DatasetCard:
    if name == GENERIC:
        from harness.data.layouts.generic import discover_classes

        found = discover_classes(root)
        if not found:
            raise DatasetError(f"generic dataset at {root}: no class folders found (a class folder holds train/ and test/, like MVTec AD)")
        card = DatasetCard(name=GENERIC, title=f"User data at {root}", layout=GENERIC, modalities=("rgb",),
                           classes={}, counts_verified=False, source=str(root))
        return card.with_counts({c: {} for c in found}, verified=False)
    card = get_card(name)
    if expected is not None:
        source = str(expected) if isinstance(expected, (str, Path)) else "expected counts"
        card = replace(card.with_counts(counts_from(expected)), source=source)
    return card


def _chosen_classes(card: DatasetCard, classes) -> list[str]:
    if classes is None:
        return card.class_names
    chosen = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in chosen if c not in card.classes]
    if unknown:
        raise DatasetError(f"dataset {card.name!r} has no class(es) {', '.join(map(repr, unknown))}; "
                           f"its classes are: {', '.join(card.class_names)}")
    return chosen


def _unknown_folders(root: Path, card: DatasetCard, extras) -> list[Problem]:
    problems = []
    for folder in subfolders(root):
        if folder.name not in card.classes and folder.name not in extras:
            problems.append(Problem("unknown-folder",
                                    f"folder {folder} is not a class of {card.name} ({', '.join(card.class_names)}); "
                                    f"if it is a misnamed class folder, rename it, otherwise move it out of the root",
                                    str(folder), class_name=folder.name))
    return problems


def _count_problems(card: DatasetCard, chosen: list[str], found: Counts, scan: LayoutScan, root: Path) -> list[Problem]:
    severity = "error" if card.counts_verified else "warning"
    problems = []
    missing = {p.class_name for p in scan.problems if p.kind == "missing-class"}
    for cls in chosen:
        expected = card.classes[cls].counts
        if not expected or cls in missing:
            continue
        have = found.get(cls, {})
        for split in SPLITS:
            want, got = expected.get(split, {}), have.get(split, {})
            # an unverified card checks only the numbers it lists
            defects = set(want) | set(got) if card.counts_verified else set(want)
            for defect in sorted(defects):
                if want.get(defect, 0) != got.get(defect, 0):
                    folder = scan.folders.get((cls, split, defect), root / cls / split / defect)
                    problems.append(Problem(
                        "count-mismatch",
                        f"class {cls!r}, split {split!r}, defect {defect!r}: found {got.get(defect, 0)} image(s) in {folder}, "
                        f"expected {want.get(defect, 0)} (card {card.source or card.name})"
                        + ("" if card.counts_verified else " [card counts unverified: warning only]"),
                        str(folder), class_name=cls, split=split, defect_type=defect, severity=severity))
    return problems
