"""The leaderboard as one self-contained HTML file: tables, base64-inlined PNG plots, a map gallery.

The gallery reads the prediction artefact of the best configuration's first complete run and
shows its best and worst anomalous and normal samples. Images and ground truth come from the data
layer (dataset name and root recorded in the run's config); where the data is not reachable the
gallery shows the maps alone and says why.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np

from harness.report import plots
from harness.report.leaderboard import Leaderboard, LeaderboardRow
from harness.report.table import (
    TextTable,
    leaderboard_table,
    metric_title,
    per_class_table,
    reference_check_table,
    report_heading,
    reported_elsewhere_table,
)
from harness.results.predictions import Prediction, read_predictions
from harness.results.store import ResultStore

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2} td:nth-child(2){text-align:left}
tr.failed td{color:#b00} tr.missing td{color:#999} tr.partial td{color:#a60}
.note{color:#666;font-size:12px} img{max-width:100%;margin:0.5em 0}
.value,.ci{white-space:nowrap} .ci{color:#666;font-size:11px}
"""
_WITH_INTERVAL = re.compile(r"(.+) (\[[^\]]+\])")


def render_html(board: Leaderboard, store: ResultStore) -> str:
    title, caption = report_heading(board)
    summary = leaderboard_table(board)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{html.escape(caption)}</p>",
        _table_html(summary),
        "".join(f"<p class='note'>{html.escape(note)}</p>" for note in summary.footnotes + summary.legend),
        *_elsewhere_section(board),
        *_reference_check_section(board),
        "<h2>Plots</h2>",
    ]
    for metric in [m for m in ("i_auroc", "p_auroc", "aupro") if m in board.metrics]:
        body.append(_img(plots.metric_by_configuration(board, metric), f"{metric} by configuration"))
    body.append(_img(plots.parameters_vs_metric(board), "parameters vs I-AUROC")
                or "<p class='note'>Parameters vs I-AUROC: no run recorded params_trainable.</p>")
    body += _routing_section(board)
    body += _gallery_section(board, store)
    body.append("<h2>Per class</h2>")
    for metric in board.metrics:
        body += [f"<h3>{html.escape(metric_title(metric))}</h3>", _table_html(per_class_table(board, metric))]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(part for part in body if part)
        + "</body></html>\n"
    )


def _elsewhere_section(board: Leaderboard) -> list[str]:
    table = reported_elsewhere_table(board)
    if not table.rows:
        return []
    return ["<h2>Reported by the papers on other datasets</h2>", f"<p class='note'>{html.escape(table.footnotes[0])}</p>",
            _table_html(table)]


def _reference_check_section(board: Leaderboard) -> list[str]:
    table = reference_check_table(board)
    if not table.rows:
        return []
    notes = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in table.footnotes + table.legend)
    return ["<h2>Reference check</h2>", _table_html(table), notes]


def _table_html(table: TextTable) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    rows = "".join(
        f"<tr class='{status}'>" + "".join(f"<td>{_cell_html(c)}</td>" for c in cells) + "</tr>"
        for cells, status in zip(table.rows, table.row_status)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell_html(cell: str) -> str:
    """A metric cell's bootstrap interval on its own line under the mean ± std, neither broken inside."""
    found = _WITH_INTERVAL.fullmatch(cell)
    if found is None:
        return html.escape(cell)
    value, interval = (html.escape(part) for part in found.groups())
    return f"<span class='value'>{value}</span><br><span class='ci'>{interval}</span>"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _routing_section(board: Leaderboard) -> list[str]:
    if not board.routing:
        return []
    parts = ["<h2>Adapter / expert usage per class</h2>"]
    for row in board.rows:
        ids = set(row.complete_run_ids)
        rows = [r for r in board.routing if r["run_id"] in ids]
        for group, group_rows in routing_groups(rows).items():
            title = f"{row.label}: {group + ', ' if group else ''}selection frequency"
            parts.append(_img(plots.expert_usage_heatmap(group_rows, title), f"usage {row.label} {group}"))
    return parts


MODALITY_NAMES = ("rgb", "depth", "ir")


def routing_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Routing rows split into one heatmap each: by modality where a layer name says one (UniMMAD's
    "s2.k3.depth.leaders") and by the expert set a layer routes over (its 32 leaders, its 8 bases)."""
    experts_of: dict[str, set[str]] = {}
    for r in rows:
        experts_of.setdefault(r["layer"], set()).add(r["expert"])
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        parts = r["layer"].split(".")
        modality = next((p for p in parts if p in MODALITY_NAMES), "")
        groups.setdefault((modality, tuple(sorted(experts_of[r["layer"]]))), []).append(r)
    several_sets = len({experts for _, experts in groups}) > 1
    named = {}
    for (modality, experts), group_rows in groups.items():
        kind = plots.expert_family(experts[0]) if several_sets else ""
        named[" ".join(p for p in (modality, kind) if p)] = group_rows
    return named


def _gallery_section(board: Leaderboard, store: ResultStore) -> list[str]:
    best = next((r for r in board.rows if r.complete_run_ids), None)
    if best is None:
        return []
    run_id = best.complete_run_ids[0]
    path = store.predictions_path(run_id)
    header = f"<h2>Anomaly maps: {html.escape(best.label)} (run {run_id})</h2>"
    if not path.exists():
        return [header, f"<p class='note'>No prediction artefact at {html.escape(str(path))}; the gallery needs one.</p>"]
    chosen = choose_gallery_samples(read_predictions(path))
    items, note = _gallery_items(best, chosen)
    parts = [header, _img(plots.anomaly_map_gallery(items), "anomaly-map gallery")]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    return parts


def choose_gallery_samples(predictions) -> list[tuple[str, Prediction]]:
    """Best and worst anomalous (highest/lowest score) and normal (lowest/highest score) samples."""
    extremes: dict[str, Prediction] = {}
    rules = {
        "best anomalous": (1, max), "worst anomalous": (1, min),
        "best normal": (0, min), "worst normal": (0, max),
    }
    for prediction in predictions:
        for name, (label, pick) in rules.items():
            if prediction.label != label:
                continue
            current = extremes.get(name)
            if current is None or pick(prediction.score, current.score) != current.score:
                extremes[name] = prediction
    return [(name, extremes[name]) for name in rules if name in extremes]


def _gallery_items(row: LeaderboardRow, chosen: list[tuple[str, Prediction]]) -> tuple[list, str | None]:
    samples, note = _samples_by_id(row.config, {p.sample_id for _, p in chosen})
    items = []
    for name, prediction in chosen:
        image = ground_truth = None
        sample = samples.get(prediction.sample_id)
        size = prediction.anomaly_map.shape
        if sample is not None:
            from harness.data import read_mask_stack, read_rgb

            image = read_rgb(sample.images["rgb"], size)
            ground_truth = read_mask_stack(sample, size).any(axis=0)
        title = f"{name}: {prediction.sample_id} (score {prediction.score:.3g})"
        items.append(plots.GalleryItem(title, np.asarray(prediction.anomaly_map), image, ground_truth))
    return items, note


def _samples_by_id(config: dict, wanted: set[str]) -> tuple[dict, str | None]:
    """The dataset's samples with these ids, or an explanation of why the data is not reachable."""
    dataset, root = config.get("dataset"), config.get("data_root")
    try:
        from harness.data import load_dataset

        index = load_dataset(dataset, root, classes=config.get("classes"), check_counts=False)
    except Exception as exc:  # the report must still render without the data
        where = root or "its default location"
        return {}, f"Images and ground truth not shown: dataset {dataset!r} at {where} could not be read ({exc})."
    found = {s.sample_id: s for s in index.samples if s.sample_id in wanted}
    missing = wanted - set(found)
    note = f"{len(missing)} sample(s) not found in the dataset; their maps are shown alone." if missing else None
    return found, note


def write_html(board: Leaderboard, store: ResultStore, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(board, store), encoding="utf-8")
    return path


__all__ = ["choose_gallery_samples", "render_html", "write_html"]
