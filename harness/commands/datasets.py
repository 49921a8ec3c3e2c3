"""Dataset cards and dataset roots: list the cards, verify a root against its card, build the
embedded default dataset, or write a tiny fixture in an official layout.

Without a subcommand, lists the bundled dataset cards.

Examples:
  harness datasets list
  harness datasets show visa
  harness datasets verify /data/mvtec_anomaly_detection --dataset mvtec_ad
  harness datasets verify /data/VisA --dataset visa --classes candle,pcb1 --no-pixels
  harness datasets verify /data/Real-IAD --dataset real_iad --option views=C1 --option json_dir=realiad_jsons_sv
  harness datasets prepare embedded --seed 0
  harness datasets prepare embedded_v3 --seed 1
  harness datasets prepare embedded_3d
  harness datasets prepare validation_a
  harness datasets fixture mvtec_loco /tmp/loco_fixture --variant missing_mask
  harness datasets fixture real_iad /tmp/real_iad_fixture
  harness datasets prepare-components embedded --method anomalymoe --preset cpu
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

NAME = "datasets"
HELP = "list dataset cards, verify a dataset root, prepare the embedded datasets"

SMALL_DATASET = 200  # samples; below this no progress bar is drawn
FIXTURE_LAYOUTS = ("mvtec_ad", "visa", "mvtec_loco", "mvtec_3d", "generic")  # harness.data.fixtures.write_fixture
REAL_IAD = "real_iad"  # harness.data.fixtures.write_real_iad_fixture (no planted variants)
GENERATED_BUILDERS = {  # dataset -> (module, function(seed=, force=) -> root)
    "embedded": ("harness.data.embedded", "prepare_embedded"),
    "embedded_v3": ("harness.data.embedded", "prepare_embedded_v3"),
    "embedded_3d": ("harness.data.embedded_3d", "prepare_embedded_3d"),
    "validation_a": ("harness.data.validation_sets", "prepare_validation_a"),
    "validation_b": ("harness.data.validation_sets", "prepare_validation_b"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")

    sub.add_parser("list", help="list the bundled dataset cards (the default)",
                   description="List the bundled dataset cards: layout, modalities, classes, split totals, licence.")

    show = sub.add_parser("show", help="show one card: classes and expected counts per split and defect type",
                          description="Show one dataset card in full: classes, expected counts, licence, citation, notes.")
    show.add_argument("name", help="dataset name, e.g. mvtec_ad, visa, mvtec_loco, mvtec_3d")

    verify = sub.add_parser(
        "verify", help="check a dataset root against its card and list every problem",
        description="Read ROOT as dataset NAME, print counts per class, split and defect type against the card, "
                    "then every problem found (missing or orphan masks, unknown or misnamed class folders, count "
                    "mismatches, unreadable files, size mismatches). Exit status 1 if there is any problem, 0 otherwise.")
    verify.add_argument("root", type=Path, help="the dataset root: the folder that holds the class folders")
    verify.add_argument("--dataset", required=True, help="dataset name (its card picks the layout); 'generic' for your own MVTec-like data")
    verify.add_argument("--classes", help="comma-separated subset of classes (if you downloaded only some)")
    verify.add_argument("--expect", type=Path, metavar="CARD.yaml", help="a card whose classes and counts replace the bundled card's")
    _add_layout_option(verify)
    verify.add_argument("--no-pixels", action="store_true", help="check structure and counts only; do not decode every file")

    prepare = sub.add_parser("prepare", help="build a dataset that the harness generates itself",
                             description="Build a generated dataset: 'embedded' (the default dataset built from photos "
                                         "shipped in Python wheels, generator v2), 'embedded_v3' (the same photos, generator v3: "
                                         "subtler defects and more varied views), 'embedded_3d' (synthetic rgb + point-cloud scans in "
                                         "the MVTec 3D-AD layout) or 'validation_a' / 'validation_b' (photo datasets with "
                                         "other images and defects, for tuning presets); official datasets must be downloaded by you.")
    prepare.add_argument("name", choices=list(GENERATED_BUILDERS), help="the dataset to build")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the generated split and anomalies (default 0)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if a copy already exists in the cache")
    _add_prepare_components(sub)

    fixture = sub.add_parser("fixture", help="write a tiny dataset in an official layout (to see or test a layout)",
                             description="Write a tiny dataset (32x32 images) in LAYOUT under DIR, plus DIR/expected_card.yaml "
                                         "for `harness datasets verify DIR --dataset ... --expect DIR/expected_card.yaml`.")
    fixture.add_argument("layout", choices=[*FIXTURE_LAYOUTS, REAL_IAD], help="on-disk layout")
    fixture.add_argument("dir", type=Path, help="where to write it (must be empty or absent)")
    fixture.add_argument("--variant", choices=["missing_mask", "misnamed_class", "corrupt_image"],
                         help=f"plant one problem (layouts {', '.join(FIXTURE_LAYOUTS)})")
    fixture.add_argument("--seed", type=int, default=0, help="random seed of the pixel content")
    fixture.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")


def _add_layout_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the dataset's layout (YAML value), repeatable; Real-IAD: views=C1,C2, "
                             f"json_dir=realiad_jsons_sv, image_dir=realiad_512{'; ' + note if note else ''}")


def run(args: argparse.Namespace) -> int:
    from harness.data.cards import CardError
    from harness.data.registry import DatasetError

    console = Console()
    command = args.datasets_command or "list"
    try:
        if command == "list":
            return _list(console)
        if command == "show":
            return _show(console, args.name)
        if command == "verify":
            return _verify(console, args)
        if command == "prepare-components":
            return _prepare_components(console, args)
        if command == "prepare":
            return _prepare(console, args)
        return _fixture(console, args)
    except (CardError, DatasetError, FileExistsError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 1


def _plain(problem) -> str:
    """A problem as markup-safe text: paths may hold square brackets."""
    return escape(f"[{problem.kind}] {problem.message}")


def _list(console: Console) -> int:
    from harness.data.registry import list_cards

    table = Table(title="Dataset cards")
    for column in ("name", "layout", "modalities", "classes", "train", "validation", "test", "verified"):
        table.add_column(column, justify="right" if column in ("classes", "train", "validation", "test") else "left")
    for card in list_cards():
        totals = [sum(c.split_total(s) for c in card.classes.values()) for s in ("train", "validation", "test")]
        table.add_row(card.name, card.layout, ",".join(card.modalities), str(len(card.classes)),
                      *(str(t) if t else "-" for t in totals),
                      "yes" if card.counts_verified else "[yellow]no[/yellow]")
    console.print(table)
    console.print("Licence, citation and per-class counts: [bold]harness datasets show NAME[/bold]. "
                  "Read your own MVTec-like data with [bold]--dataset generic[/bold] (classes discovered, counts reported).")
    return 0


def _show(console: Console, name: str) -> int:
    from harness.data.registry import get_card

    card = get_card(name)
    console.print(f"[bold]{card.title}[/bold] ({card.name}), layout {card.layout}, modalities {', '.join(card.modalities)}")
    console.print(f"licence: {card.licence}\ncitation: {card.citation}\nhomepage: {card.homepage}", soft_wrap=True)
    if card.notes:
        console.print(f"notes: {card.notes}", soft_wrap=True)
    console.print(_counts_table(card.counts(), None, f"Expected counts ({'verified' if card.counts_verified else 'UNVERIFIED'})"))
    return 0


def _counts_table(found, expected, title: str) -> Table:
    """Rows per class/split/defect; with expected, a column for it and a mark where they differ."""
    table = Table(title=title)
    for column in ("class", "split", "defect type", "found" if expected is not None else "images"):
        table.add_column(column, justify="right" if column in ("found", "images") else "left")
    if expected is not None:
        table.add_column("expected", justify="right")
        table.add_column("")
    keys = sorted({(c, s, d) for source in (found, expected or {}) for c, per in source.items() for s, dd in per.items() for d in dd},
                  key=lambda k: (k[0], ("train", "validation", "test").index(k[1]), k[2] != "good", k[2]))
    for cls, split, defect in keys:
        got = found.get(cls, {}).get(split, {}).get(defect, 0)
        if expected is None:
            table.add_row(cls, split, defect, str(got))
            continue
        want = expected.get(cls, {}).get(split, {}).get(defect)
        mark = "" if want is None else ("[green]ok[/green]" if want == got else "[red]MISMATCH[/red]")
        table.add_row(cls, split, defect, str(got), "-" if want is None else str(want), mark)
    return table


def _verify(console: Console, args: argparse.Namespace) -> int:
    from harness.commands._options import assigned_values, comma_list
    from harness.data.verify import verify_dataset

    classes = comma_list(args.classes)
    started = time.perf_counter()
    with Progress(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = None

        def advance(done: int, total: int) -> None:
            nonlocal task
            if total < SMALL_DATASET:
                return
            if task is None:
                task = progress.add_task("decode", total=total)
            progress.update(task, completed=done)

        report = verify_dataset(args.dataset, args.root, classes=classes, expected=args.expect,
                                options=assigned_values(args.options), check_pixels=not args.no_pixels, on_progress=advance)
    expected = {c: dict(report.card.classes[c].counts) for c in report.counts if c in report.card.classes}
    has_counts = any(expected.values())
    console.print(_counts_table(report.counts, expected if has_counts else None,
                                f"{report.card.name} at {report.root}"))
    seconds = time.perf_counter() - started
    console.print(f"{sum(n for per in report.counts.values() for d in per.values() for n in d.values())} samples, "
                  f"{report.files_decoded} files decoded in {seconds:.1f} s; fingerprint {report.fingerprint[:16]}", soft_wrap=True)
    for problem in report.warnings:
        console.print(f"[yellow]warning[/yellow] {_plain(problem)}", soft_wrap=True, highlight=False)
    for problem in report.errors:
        console.print(f"[red]problem[/red] {_plain(problem)}", soft_wrap=True, highlight=False)
    if report.ok:
        console.print(f"[green]OK[/green]: {report.root} matches {report.card.name}"
                      + (f" ({len(report.warnings)} warning(s))" if report.warnings else ""))
        return 0
    console.print(f"[red]{len(report.errors)} problem(s)[/red] in {report.root}", soft_wrap=True)
    return 1


def _prepare(console: Console, args: argparse.Namespace) -> int:
    import importlib

    module_name, builder = GENERATED_BUILDERS[args.name]
    try:
        prepare = getattr(importlib.import_module(module_name), builder)
    except ImportError as err:
        console.print(f"[red]error:[/red] the {args.name} dataset builder is not available ({err})")
        return 1
    from harness.data.registry import count_samples, scan_dataset

    started = time.perf_counter()
    root = prepare(seed=args.seed, force=args.force)
    seconds = time.perf_counter() - started
    scan = scan_dataset(args.name, root)
    console.print(_counts_table(count_samples(scan.layout.samples), None, f"{args.name} dataset"))
    console.print(f"written to {root} in {seconds:.1f} s (seed {args.seed})", soft_wrap=True)
    for problem in scan.problems:
        console.print(f"[yellow]{problem.severity}[/yellow] {_plain(problem)}", soft_wrap=True, highlight=False)
    return 1 if scan.errors else 0


def _fixture(console: Console, args: argparse.Namespace) -> int:
    from harness.config import ConfigError
    from harness.data.fixtures import write_fixture, write_real_iad_fixture

    if args.layout == REAL_IAD:
        if args.variant is not None:
            raise ConfigError(f"--variant {args.variant}: the real_iad fixture plants no problems; "
                              f"variants are for the layouts {', '.join(FIXTURE_LAYOUTS)}")
        info = write_real_iad_fixture(args.dir, seed=args.seed, size=args.size)
    else:
        info = write_fixture(args.layout, args.dir, seed=args.seed, size=args.size, variant=args.variant)
    card_path = info.write_card(info.root / "expected_card.yaml")
    console.print(_counts_table(info.counts, None, f"{args.layout} fixture at {info.root}"))
    if info.broken is not None:
        console.print(f"planted problem {info.variant}: {info.broken}", soft_wrap=True)
    console.print(f"check it with: harness datasets verify {info.root} --dataset {info.dataset} --expect {card_path}", soft_wrap=True)
    return 0


# ------------------------------------------------------------------------- prepare-components

COMPONENT_OPTIONS = {"backbone": "--backbone", "level": "--level", "image_size": "--image-size", "mask_size": "--mask-size",
                     "clusters": "--clusters", "coreset_fraction": "--coreset-fraction", "weights": "--weights", "seed": "--seed",
                     "dataset": "DATASET", "data_root": "--data-root", "classes": "--classes", "method": "--method", "preset": "--preset",
                     "dataset_options": "--option"}


def _component_option_name(key: str) -> str:
    """The option of prepare-components that sets a key: ``dataset_options.views`` -> ``--option views``."""
    top, dot, rest = key.partition(".")
    return f"--option {rest}" if dot and top == "dataset_options" else COMPONENT_OPTIONS.get(key, key)


def _add_prepare_components(sub) -> None:
    components = sub.add_parser(
        "prepare-components", help="compute and cache AnomalyMoE's component masks of a dataset",
        description="Compute the offline component masks (AnomalyMoE, spec 4.3) of DATASET's train and test splits once and "
                    "cache them: frozen features, a greedy coreset per image, k-means per class, Otsu masks. The spec comes "
                    "from the method's component_spec() for --method/--preset; the --backbone ... --seed options replace "
                    "its fields (and are all needed while the method cannot be built here).")
    components.add_argument("dataset", help="dataset name (see `harness datasets list`), e.g. embedded")
    components.add_argument("--data-root", default=None, help="dataset root folder (not needed for the embedded dataset)")
    components.add_argument("--classes", default=None, help="comma-separated subset of classes")
    _add_layout_option(components, "the same options as the training run's --dataset-option, so its cache entry is the run's")
    components.add_argument("--method", default="anomalymoe", help="the method whose component_spec() to use (default anomalymoe)")
    components.add_argument("--preset", default="cpu", choices=["cpu", "paper"], help="the method's preset (default cpu)")
    components.add_argument("--backbone", default=None, help="timm backbone name, e.g. tf_efficientnet_lite0")
    components.add_argument("--level", type=int, default=None, help="the backbone feature level (timm out_index)")
    components.add_argument("--image-size", type=int, default=None, help="square input size of the backbone")
    components.add_argument("--mask-size", type=int, default=None, help="side of the stored masks")
    components.add_argument("--clusters", type=int, default=None, help="k-means clusters per class (official: 5)")
    components.add_argument("--coreset-fraction", type=float, default=None, help="share of each image's patches kept by the greedy coreset (official: 0.01)")
    components.add_argument("--weights", default=None, help="backbone weights: auto, packaged, hub, random or a state-dict path")
    components.add_argument("--seed", type=int, default=None, help="seed of the coreset projection and k-means")
    components.add_argument("--dense-crf", action="store_true", help="refine the heat with the official DenseCRF (needs pydensecrf)")
    components.add_argument("--no-cache", action="store_true", help="compute without reading or writing the cache")


def _component_spec_from(args: argparse.Namespace):
    """The method's ComponentSpec with the explicit options put in; every problem named by its option."""
    from dataclasses import fields, replace

    import methods
    from harness.components import component_spec_issues
    from harness.config import ConfigIssue, ConfigProblems, renamed
    from methods.base import ComponentSpec

    source = "harness datasets prepare-components"
    explicit = {f.name: getattr(args, f.name) for f in fields(ComponentSpec) if getattr(args, f.name) is not None}
    spec = None
    if args.method in methods.available():
        spec = methods.get(args.method).component_spec_for(methods.preset_config(args.method, args.preset))
        if spec is None:
            raise ConfigProblems(source, [ConfigIssue("--method", args.method, "a method that reads component masks (anomalymoe)")])
        spec = replace(spec, **explicit)
    else:
        required = ("backbone", "level", "image_size", "mask_size")
        missing = [COMPONENT_OPTIONS[name] for name in required if name not in explicit]
        if missing:
            why = methods.unavailable().get(args.method, f"not one of {', '.join(methods.available())}")
            raise ConfigProblems(source, [ConfigIssue("--method", args.method, f"a method that can be built here ({why}), "
                                                      f"or the options {', '.join(missing)}")])
        spec = ComponentSpec(**explicit)
    issues = component_spec_issues(spec)
    if issues:
        raise ConfigProblems(source, renamed(issues, _component_option_name))
    return spec


def _prepare_components(console: Console, args: argparse.Namespace) -> int:
    from harness.commands._options import assigned_values, comma_list
    from harness.components import component_masks
    from harness.config import ConfigProblems, renamed
    from harness.data.registry import load_dataset
    from harness.training.trial_config import dataset_issues

    classes = comma_list(args.classes)
    options = assigned_values(args.options)
    issues = dataset_issues(args.dataset, args.data_root, classes, None, options)
    if issues:
        raise ConfigProblems("harness datasets prepare-components", renamed(issues, _component_option_name))
    spec = _component_spec_from(args)
    index = load_dataset(args.dataset, args.data_root, classes=classes, options=options)
    fingerprint = index.fingerprint()
    console.print(f"component masks of {index.name} with {spec}", soft_wrap=True, highlight=False)
    splits = {split: index.split(split) for split in ("train", "test")}
    started = time.perf_counter()
    results = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        for split, samples in splits.items():
            task = progress.add_task(f"{split} components", total=len(samples))
            results[split] = component_masks(
                index.name, fingerprint, split, samples, spec, train_samples=splits["train"], use_cache=not args.no_cache,
                progress=lambda n, task=task: progress.advance(task, n), dense_crf=args.dense_crf)
    console.print(_components_table(results, f"{index.name}: component masks (k={spec.clusters}, {spec.mask_size} px)"))
    for split, result in results.items():
        state = "read from the cache" if result.loaded else ("computed" if result.path is None else "computed and cached")
        console.print(f"{split}: {state}{f' at {result.path}' if result.path else ''}", soft_wrap=True, highlight=False)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _components_table(results: dict, title: str) -> Table:
    """Per class and split: images, mean components per image, images with none."""
    import numpy as np

    table = Table(title=title)
    for column in ("class", "split", "images", "mean components", "zero components"):
        table.add_column(column, justify="left" if column in ("class", "split") else "right")
    for split, result in results.items():
        names = np.asarray(result.class_names)
        for class_name in dict.fromkeys(result.class_names):
            counts = result.counts[names == class_name]
            table.add_row(class_name, split, str(len(counts)), f"{counts.mean():.2f}", str(int((counts == 0).sum())))
    return table
