"""List the methods: version, what each consumes (frozen backbone features, or images through an
encoder it owns), whether it is trained or fitted in one pass, its modalities, and per preset the
backbone it reads with its weights setting, levels, input size, epochs and batch size.

Examples:
  harness methods
  harness methods --json
"""

from __future__ import annotations

import json

NAME = "methods"
HELP = "list the methods, their presets and what each one consumes"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def method_rows() -> list[dict]:
    """One row per registered method, read from its class declarations and preset configs."""
    import methods

    return [method_row(methods.get(name)) for name in methods.available()]


def method_row(cls) -> dict:
    return {
        "method": cls.name,
        "version": cls.version,
        "input_kind": cls.input_kind,
        "training": "fitted" if cls.fitted else "trained",
        "class_normalised": cls.class_normalised,
        "modalities": list(dict.fromkeys(m for config in cls.presets.values() for m in config.get("modalities") or ("rgb",))),
        "presets": {name: preset_row(cls, config) for name, config in sorted(cls.presets.items())},
    }


def preset_row(cls, config: dict) -> dict:
    """What one preset reads: the backbone (frozen for feature input, the method's own encoder for images)."""
    return {
        "backbone": config.get("backbone"),
        "backbone_role": "frozen features" if cls.input_kind == "features" else "the method's own encoder",
        "backbone_weights": config.get("backbone_weights", "auto"),
        "backbone_levels": config.get("backbone_levels"),
        "image_size": config.get("image_size"),
        "modalities": list(config.get("modalities") or ("rgb",)),
        "epochs": None if cls.fitted else config.get("epochs"),
        "batch_size": config.get("batch_size"),
    }


def run(args) -> int:
    import methods

    rows, broken = method_rows(), methods.unavailable()
    if args.json:
        print(json.dumps({"methods": rows, "unavailable": broken}, indent=2))
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    for line in methods_listing(rows, broken):
        console.print(line, soft_wrap=True)
    console.print("harness train --method NAME --preset PRESET trains one; --json adds levels and batch sizes")
    return 0


def methods_listing(rows: list[dict], broken: dict[str, str]) -> list[str]:
    """A method line (what it consumes, how it learns), then one line per preset; within 80 columns."""
    width = max((len(config["backbone"]) for row in rows for config in row["presets"].values()), default=0)
    lines = []
    for row in rows:
        head, consumes = f"{row['method']} v{row['version']}", _consumes(row)
        if len(head) + 2 + len(consumes) <= 80:
            lines.append(f"[bold]{row['method']}[/bold] v{row['version']}  {consumes}")
        else:  # a long method name: what it consumes goes on a line of its own
            lines += [f"[bold]{row['method']}[/bold] v{row['version']}", f"  {consumes}"]
        for preset, config in row["presets"].items():
            epochs = "one pass" if config["epochs"] is None else f"{config['epochs']} epochs"
            weights = "" if config["backbone_weights"] == "auto" else f"  weights {config['backbone_weights']}"
            lines.append(f"  {preset:<6} {config['backbone']:<{width}}  {config['image_size']:>4} px  {epochs}{weights}")
    lines += [f"[red]{name} unavailable[/red]: {reason}" for name, reason in sorted(broken.items())]
    return lines


def _consumes(row: dict) -> str:
    """e.g. "frozen backbone features, trained" or "images rgb+depth (encoder inside), trained"."""
    if row["input_kind"] == "features":
        text = "frozen backbone features"
    else:
        modalities = "" if row["modalities"] == ["rgb"] else " " + "+".join(row["modalities"])
        text = f"images{modalities} (its own encoder)"
    return f"{text}, {row['training']}" + (", maps normalised per class" if row["class_normalised"] else "")
