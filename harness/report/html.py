"""The leaderboard as one self-contained HTML file: tables, base64-inlined PNG plots, a map gallery.

Tables sit in scroll containers so the page itself never overflows sideways; numbers are right
aligned in tabular figures, names left aligned; the best value of each metric column is marked.
Per-class results are one table shaded per metric column. A provenance section lists, per run,
the git revision, harness and torch versions, hardware and command line the ``runs`` table holds.

The gallery takes a few samples per class (best and worst anomalous, worst normal) from the best
configuration's first complete run with a prediction artefact and shows the same samples for up
to MAX_GALLERY_CONFIGURATIONS configurations side by side: the map overlaid on the image with a
colour bar, and the map thresholded at that run's pixel F1-max threshold over its test images
(spec 5.1's F1 = 2TP / (TP + FP + P)). Images and ground truth come from the data layer (dataset
name and root recorded in the run's config); where the data is not reachable the maps are shown
over grey and the note says why.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np

from harness.metrics.table import AUPIMO
from harness.report import plots
from harness.report.leaderboard import Leaderboard, LeaderboardRow
from harness.report.table import (
    TextTable,
    format_summary,
    leaderboard_table,
    metric_title,
    reference_check_table,
    report_heading,
    reported_elsewhere_table,
)
from harness.results.predictions import Prediction, read_predictions
from harness.results.store import ResultStore

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;padding:0 1.5em;max-width:1360px;color:#222}
.scroll{overflow-x:auto;max-width:100%;margin:0.8em 0}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:3px 5px;text-align:right;vertical-align:top}
th{background:#f2f2f2} th.text,td.text{text-align:left} td:not(.text){white-space:nowrap}
td.best{font-weight:700;box-shadow:inset 3px 0 #2e7d32}
tr.failed td{color:#b00} tr.missing td{color:#999} tr.partial td{color:#a60}
.note{color:#666;font-size:12px;overflow-wrap:anywhere} img{max-width:100%;margin:0.5em 0}
.value,.ci{white-space:nowrap} .ci{color:#666;font-size:11px}
details.problem pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:11px;color:#555}
td.command{font-family:monospace;font-size:11px;text-align:left;min-width:24em;overflow-wrap:anywhere}
.plots{display:flex;flex-wrap:wrap;gap:0.5em 1.5em;align-items:flex-start}
"""
_WITH_INTERVAL = re.compile(r"(.+) (\[[^\]]+\])")
_LEADING_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TEXT_COLUMNS = {"Configuration", "Class", "Method", "Dataset", "Modalities", "Status", "Source", "Paper's own setting",
                "Metric", "Run", "Command line", "Git revision", "Harness", "Torch", "Hardware"}
MAX_GALLERY_CONFIGURATIONS = 4
GALLERY_PER_CLASS = ("best anomalous", "worst anomalous", "worst normal")
HEAT_COLOUR = np.array([107, 174, 214])  # the highest value of a column; white is its lowest


def render_html(board: Leaderboard, store: ResultStore) -> str:
    title, caption = report_heading(board)
    summary = leaderboard_table(board, efficiency=())
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{html.escape(caption)}</p>",
        _table_html(summary, _best_cells(summary, board.metrics)),
        "".join(_note_html(note) for note in summary.footnotes + summary.legend),
        "<p class='note'>Bold with a green edge: the best value of its metric column.</p>",
        *_efficiency_section(board),
        *_elsewhere_section(board),
        *_reference_check_section(board),
        *_plot_section(board),
        *_routing_section(board),
        *_aupimo_section(board, store),
        *_gallery_section(board, store),
        *_per_class_section(board),
        *_provenance_section(board, store),
    ]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(part for part in body if part)
        + "</body></html>\n"
    )


def _efficiency_section(board: Leaderboard) -> list[str]:
    """Efficiency in a table of its own, so that the main table fits the page."""
    table = leaderboard_table(board, [])
    if len(table.headers) <= len(leaderboard_table(board, [], ()).headers):
        return []
    return ["<h2>Efficiency</h2>", _table_html(table)]


def _note_html(note: str) -> str:
    """A note; a multi-line one (a failure's traceback) shows its first line and folds the rest."""
    first, _, rest = note.partition("\n")
    if not rest.strip():
        return f"<p class='note'>{html.escape(note)}</p>"
    return (f"<details class='problem note'><summary>{html.escape(first)}</summary>"
            f"<pre>{html.escape(rest)}</pre></details>")


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


def _best_cells(table: TextTable, metrics: list[str]) -> set[tuple[int, int]]:
    """(row, column) of the highest shown value in each metric column (ties all marked)."""
    titles = {metric_title(m) for m in metrics}
    columns = [j for j, header in enumerate(table.headers) if header in titles]
    return _top_cells(table.rows, range(len(table.rows)), columns)


def _top_cells(rows: list[list[str]], row_indexes, columns) -> set[tuple[int, int]]:
    best = set()
    for j in columns:
        values = {i: _leading_number(rows[i][j]) for i in row_indexes}
        values = {i: v for i, v in values.items() if v is not None}
        if len(values) > 1:  # a lone value is not "the best"
            top = max(values.values())
            best |= {(i, j) for i, v in values.items() if v == top}
    return best


def _leading_number(cell: str) -> float | None:
    found = _LEADING_NUMBER.match(cell)
    return float(found.group()) if found else None


def _table_html(table: TextTable, best: set[tuple[int, int]] = frozenset()) -> str:
    text = [header in TEXT_COLUMNS for header in table.headers]
    head = "".join(f"<th{_class(is_text and 'text')}>{html.escape(h)}</th>" for h, is_text in zip(table.headers, text))
    rows = "".join(
        f"<tr class='{status}'>"
        + "".join(f"<td{_class(is_text and 'text', (i, j) in best and 'best')}>{_cell_html(c)}</td>"
                  for j, (c, is_text) in enumerate(zip(cells, text)))
        + "</tr>"
        for i, (cells, status) in enumerate(zip(table.rows, table.row_status))
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"


def _class(*names) -> str:
    chosen = " ".join(name for name in names if name)
    return f" class='{chosen}'" if chosen else ""


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


def _plot_section(board: Leaderboard) -> list[str]:
    images = [_img(plots.metric_by_configuration(board, m), f"{m} by configuration")
              for m in ("i_auroc", "p_auroc", "aupro") if m in board.metrics]
    column = plots.efficiency_axis(board)
    images.append(_img(plots.efficiency_vs_metric(board, column), f"{column} vs I-AUROC"))
    parts = ["<h2>Plots</h2>",
             "<p class='note'>Axes run from a round floor to 100%. Dots: mean over seeds with a thin bar of ± one std "
             "over seeds; the wide pale bar is the 95% bootstrap interval over the test images where the row has one.</p>",
             f"<div class='plots'>{''.join(images)}</div>"]
    if not images[-1]:
        parts.append("<p class='note'>Efficiency vs I-AUROC: no run recorded params_trainable or GFLOPs.</p>")
    elif column == "flops_reconstruction_g":
        parts.append("<p class='note'>GFLOPs on the x axis: the trainable parameters barely change between rows.</p>")
    return parts


MAX_DISTRIBUTION_CONFIGURATIONS = len(plots.PALETTE)


def per_image_aupimo(board: Leaderboard, store: ResultStore) -> dict[str, dict[str, list[float]]]:
    """Class -> configuration label -> the AUPIMO of every anomalous image over its complete runs (best rows first)."""
    rows = [row for row in board.rows if row.complete_run_ids][:MAX_DISTRIBUTION_CONFIGURATIONS]
    label_of = {run_id: row.label for row in rows for run_id in row.complete_run_ids}
    found: dict[str, dict[str, list[float]]] = {}
    if not label_of:
        return found
    for score in store.read("sample_scores", run_ids=list(label_of)).to_pylist():
        if score[AUPIMO] is not None and not np.isnan(score[AUPIMO]):
            by_label = found.setdefault(score["class_name"], {label: [] for label in dict.fromkeys(label_of.values())})
            by_label[label_of[score["run_id"]]].append(score[AUPIMO])
    return dict(sorted(found.items()))


def _aupimo_section(board: Leaderboard, store: ResultStore) -> list[str]:
    per_class = per_image_aupimo(board, store)
    if not per_class:
        if AUPIMO not in board.metrics:
            return []
        return ["<h2>Per-image AUPIMO</h2>", "<p class='note'>No per-image AUPIMO stored (sample_scores.aupimo, result "
                "schema 3): the runs predate it or no class had enough normal pixels to define it.</p>"]
    overall = {"all classes": {label: [v for by_label in per_class.values() for v in by_label[label]]
                               for label in next(iter(per_class.values()))}}
    images = [_img(plots.per_image_distribution(overall, "Per-image AUPIMO by configuration", "AUPIMO"), "AUPIMO by configuration"),
              _img(plots.per_image_distribution(per_class, "Per-image AUPIMO by class", "AUPIMO"), "AUPIMO by class")]
    return ["<h2>Per-image AUPIMO</h2>",
            "<p class='note'>AUPIMO of every anomalous test image (anomalib's PIMO: the image's TPR over the shared FPR "
            "of the class's normal images, averaged over ln FPR in [1e-5, 1e-4]), all complete seeds pooled. Boxes: "
            "quartiles and median, whiskers to 1.5 IQR; dots: images. The table's AUPIMO is the mean of these per "
            "class, then over classes.</p>",
            f"<div class='plots'>{''.join(images)}</div>"]


def _routing_section(board: Leaderboard) -> list[str]:
    if not board.routing:
        return []
    parts = ["<h2>Routing: expert usage, gate weights and router entropy</h2>",
             "<p class='note'>Per configuration (runs pooled) and per expert set: selection frequency per class and "
             "per layer, the mean gate weight per layer, and the router entropy per layer and class divided by "
             "ln(number of experts) (1: uniform routing, 0: always one expert).</p>"]
    for row in board.rows:
        ids = set(row.complete_run_ids)
        rows = [r for r in board.routing if r["run_id"] in ids]
        for group, group_rows in routing_groups(rows).items():
            name = f"{row.label}{': ' + group if group else ''}"
            images = [
                _img(plots.expert_usage_heatmap(group_rows, f"{name}: selection frequency per class"), f"usage {name}"),
                _img(plots.layer_expert_heatmap(group_rows, "selection_freq", f"{name}: selection frequency per layer"),
                     f"layer usage {name}"),
                _img(plots.layer_expert_heatmap(group_rows, "gate_mean", f"{name}: gate weight per layer"), f"gates {name}"),
                _img(plots.router_entropy_heatmap(group_rows, f"{name}: router entropy"), f"entropy {name}"),
            ]
            parts += [f"<h3>{html.escape(name)}</h3>", f"<div class='plots'>{''.join(images)}</div>"]
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


def _per_class_section(board: Leaderboard) -> list[str]:
    table, shades, intervals = per_class_heatmap(board)
    if not table.rows:
        return []
    return ["<h2>Per class</h2>",
            "<p class='note'>Mean ± std over seeds, in percent; hover a cell for its bootstrap interval. Shading per "
            "metric column over the class rows, from its lowest value (white) to its highest (blue); the best value "
            "of each class is bold.</p>",
            _heatmap_table_html(table, shades, intervals)]


def per_class_heatmap(board: Leaderboard) -> tuple[TextTable, list[list[float | None]], list[list[str]]]:
    """Class and configuration down, every metric across; per cell its shade in [0, 1] within its column and
    its bootstrap interval ("" where none)."""
    headers = ["Class", "Configuration"] + [metric_title(m) for m in board.metrics]
    measured = [row for row in board.rows if row.complete_run_ids]
    groups = [(c, lambda row, c=c: row.per_class.get(c, {})) for c in board.classes]
    groups += [("mean", lambda row: row.metrics)]
    groups += [("pooled", lambda row: row.pooled)] if any(row.pooled for row in measured) else []
    rows, values, intervals = [], [], []
    for group, summaries_of in groups:
        for row in measured:
            found = [summaries_of(row).get(m) for m in board.metrics]
            rows.append([group, row.label] + [format_summary(s) for s in found])
            values.append([s.mean if s is not None and s.n else None for s in found])
            shown = row.intervals.get(group, {})
            intervals.append([_interval_of(format_summary(s, shown.get(m))) for s, m in zip(found, board.metrics)])
    return TextTable(headers, rows, ["complete"] * len(rows), []), _column_shades(values), intervals


def _interval_of(cell: str) -> str:
    """The "[low, high]" part of a formatted metric cell ("" where it has none)."""
    found = _WITH_INTERVAL.fullmatch(cell)
    return found.group(2) if found else ""


def _column_shades(values: list[list[float | None]]) -> list[list[float | None]]:
    shades = [[None] * len(line) for line in values]
    for j in range(len(values[0]) if values else 0):
        column = [line[j] for line in values if line[j] is not None and line[j] == line[j]]
        if not column:
            continue
        low, high = min(column), max(column)
        for i, line in enumerate(values):
            if line[j] is not None and line[j] == line[j]:
                shades[i][j] = 0.5 if high == low else (line[j] - low) / (high - low)
    return shades


def _heatmap_table_html(table: TextTable, shades: list[list[float | None]], intervals: list[list[str]]) -> str:
    best = _best_within_class(table)
    head = "".join(f"<th{_class(h in TEXT_COLUMNS and 'text')}>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for i, cells in enumerate(table.rows):
        first_of_class = i == 0 or table.rows[i - 1][0] != cells[0]
        span = sum(1 for line in table.rows if line[0] == cells[0])
        line = f"<td class='text' rowspan='{span}'><b>{html.escape(cells[0])}</b></td>" if first_of_class else ""
        line += f"<td class='text'>{html.escape(cells[1])}</td>"
        for j, (cell, shade, interval) in enumerate(zip(cells[2:], shades[i], intervals[i]), start=2):
            style = f" style='background:{_shade_colour(shade)}'" if shade is not None else ""
            tip = f" title='95% bootstrap interval {html.escape(interval)}'" if interval else ""
            line += f"<td{_class((i, j) in best and 'best')}{style}{tip}>{html.escape(cell)}</td>"
        body.append(f"<tr>{line}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _best_within_class(table: TextTable) -> set[tuple[int, int]]:
    """Per class, the highest value of each metric among the configurations."""
    best = set()
    for group in dict.fromkeys(line[0] for line in table.rows):
        indexes = [i for i, line in enumerate(table.rows) if line[0] == group]
        best |= _top_cells(table.rows, indexes, range(2, len(table.headers)))
    return best


def _shade_colour(shade: float) -> str:
    red, green, blue = (255 + (HEAT_COLOUR - 255) * shade).round().astype(int)
    return f"#{red:02x}{green:02x}{blue:02x}"


def _provenance_section(board: Leaderboard, store: ResultStore) -> list[str]:
    table, summary = provenance_table(board, store)
    if not table.rows:
        return []
    return ["<h2>Provenance</h2>", f"<p class='note'>{html.escape(summary)}</p>", _table_html(table)]


def provenance_table(board: Leaderboard, store: ResultStore) -> tuple[TextTable, str]:
    """Per recorded run of the board: what produced it (from the runs table), and a one-line summary."""
    label_of = {c.run_id: (row.label, c.seed) for row in board.rows for c in row.cells if c.run_id}
    runs = [r for r in store.read("runs").to_pylist() if r["run_id"] in label_of]
    runs.sort(key=lambda r: (list(label_of).index(r["run_id"]), r["finished_at"] is None, r["finished_at"] or 0))
    headers = ["Run", "Configuration", "Seed", "Status", "Git revision", "Harness", "Torch", "Hardware", "Threads",
               "Command line"]
    rows = [[r["run_id"], label_of[r["run_id"]][0], str(r["seed"]), r["status"], _revision(r["git_revision"]),
             r["harness_version"] or "?", _torch(r), _hardware(r), str(r["torch_threads"] or "?"), r["command_line"] or "?"]
            for r in runs]
    table = TextTable(headers, rows, [r["status"] for r in runs], [])
    distinct = {name: sorted({line[headers.index(name)] for line in rows}) for name in ("Git revision", "Torch", "Hardware")}
    summary = f"{len(rows)} run(s); " + "; ".join(
        f"{len(values)} {name.lower()}s: {', '.join(values)}" if len(values) > 1 else f"{name.lower()} {values[0]}"
        for name, values in distinct.items())
    if len(distinct["Git revision"]) > 1 or len(distinct["Hardware"]) > 1:
        summary += ". The runs differ in code or machine: compare their numbers with that in mind."
    return table, summary


def _revision(revision: str | None) -> str:
    if not revision:
        return "?"
    commit, dirty, _ = revision.partition("-dirty")
    return commit[:12] + ("-dirty" if dirty else "")


def _torch(run: dict) -> str:
    cuda = f", CUDA {run['cuda_version']}" if run.get("cuda_version") else ""
    return f"{run.get('torch_version') or '?'}{cuda}"


def _hardware(run: dict) -> str:
    machine = json.loads(run["hardware_json"]) if run.get("hardware_json") else {}
    cpu = run.get("cpu_model") or "CPU ?"
    cpu += f" ({run['cpu_capability']})" if run.get("cpu_capability") else ""
    cpu += f", {machine['cpu_count']} cores" if machine.get("cpu_count") else ""
    gpu = f", {run['gpu_model']}" if run.get("gpu_model") else ""
    memory = f", {machine['memory_gb']:g} GB" if machine.get("memory_gb") else ""
    return cpu + memory + gpu


def _gallery_section(board: Leaderboard, store: ResultStore) -> list[str]:
    columns = _gallery_runs(board, store)
    if not columns:
        best = next((r for r in board.rows if r.complete_run_ids), None)
        if best is None:
            return []
        path = store.predictions_path(best.complete_run_ids[0])
        return ["<h2>Anomaly maps</h2>",
                f"<p class='note'>No prediction artefact at {html.escape(str(path))}; the gallery needs one.</p>"]
    first_row, first_run = columns[0]
    by_run = {run_id: {p.sample_id: p for p in read_predictions(store.predictions_path(run_id))} for _, run_id in columns}
    chosen = gallery_samples_per_class(by_run[first_run].values())
    samples, note = _samples_by_id(first_row.config, {p.sample_id for _, p in chosen})
    thresholds, threshold_note = _thresholds(columns, by_run)
    gallery_columns = [_gallery_column(row, by_run[run_id], thresholds.get(run_id)) for row, run_id in columns]
    runs = ", ".join(f"{row.label} (run {run_id})" for row, run_id in columns)
    parts = ["<h2>Anomaly maps</h2>",
             f"<p class='note'>Samples chosen from {html.escape(first_row.label)}'s run {first_run}, the same samples "
             f"for {html.escape(runs)}. Per configuration: its map over the image (colour bar below, one scale per "
             "configuration) and its map at or above the run's pixel F1-max threshold over all its test images (red); "
             "the ground truth is outlined in green.</p>"]
    parts += [f"<p class='note'>{html.escape(text)}</p>" for text in (note, threshold_note) if text]
    images = []
    for class_name in dict.fromkeys(p.class_name for _, p in chosen):
        items = [_gallery_sample(name, p, samples.get(p.sample_id), by_run, columns)
                 for name, p in chosen if p.class_name == class_name]
        images.append(_img(plots.comparison_gallery(class_name, items, gallery_columns), f"anomaly maps {class_name}"))
    return parts + [f"<div class='plots'>{''.join(images)}</div>"]


def _gallery_runs(board: Leaderboard, store: ResultStore) -> list[tuple[LeaderboardRow, str]]:
    """Per configuration (best first, the first one's dataset only) its first complete run with a prediction artefact."""
    found = []
    for row in board.rows:
        run_id = next((rid for rid in row.complete_run_ids if store.predictions_path(rid).exists()), None)
        if run_id is not None and (not found or row.dataset == found[0][0].dataset):
            found.append((row, run_id))
    return found[:MAX_GALLERY_CONFIGURATIONS]


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


def gallery_samples_per_class(predictions, kinds: tuple[str, ...] = GALLERY_PER_CLASS) -> list[tuple[str, Prediction]]:
    """Per class (in name order) its extremes of the given kinds, each sample once."""
    by_class: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        by_class.setdefault(prediction.class_name, []).append(prediction)
    chosen = []
    for class_name in sorted(by_class):
        seen = set()
        for name, prediction in choose_gallery_samples(by_class[class_name]):
            if name in kinds and prediction.sample_id not in seen:
                seen.add(prediction.sample_id)
                chosen.append((name, prediction))
    return chosen


def _thresholds(columns, by_run: dict[str, dict[str, Prediction]]) -> tuple[dict[str, float], str | None]:
    """Each run's pixel F1-max threshold over all its test images, or why there is none."""
    from harness.report.uncertainty import MaskSource

    masks, thresholds = MaskSource(), {}
    for row, run_id in columns:
        predictions = list(by_run[run_id].values())
        try:
            truth = masks.masks_for(row.config, tuple(p.sample_id for p in predictions),
                                    [tuple(p.anomaly_map.shape) for p in predictions])
        except Exception as exc:  # the report must still render without the data
            return {}, f"No thresholded maps: the ground-truth masks could not be read ({exc})."
        threshold = f1_max_threshold([p.anomaly_map for p in predictions], truth)
        if threshold is not None:
            thresholds[run_id] = threshold
    return thresholds, None


def f1_max_threshold(maps: list[np.ndarray], masks: list[np.ndarray]) -> float | None:
    """The map value t maximising pixel F1 = 2TP / (TP + FP + P) of "map >= t" (None without anomalous pixels)."""
    values = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    truth = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    positives = int(truth.sum())
    if positives == 0:
        return None
    distinct, inverse = np.unique(values, return_inverse=True)
    anomalous = np.bincount(inverse, weights=truth, minlength=len(distinct))[::-1]
    predicted = np.bincount(inverse, minlength=len(distinct))[::-1]
    f1 = 2.0 * np.cumsum(anomalous) / (np.cumsum(predicted) + positives)
    return float(distinct[::-1][int(np.argmax(f1))])


def _gallery_column(row: LeaderboardRow, predictions: dict[str, Prediction], threshold: float | None) -> plots.GalleryColumn:
    low = min(float(np.min(p.anomaly_map)) for p in predictions.values())
    high = max(float(np.max(p.anomaly_map)) for p in predictions.values())
    return plots.GalleryColumn(row.label, low, high if high > low else low + 1.0, threshold)


def _gallery_sample(name: str, prediction: Prediction, sample, by_run, columns) -> plots.GallerySample:
    image = ground_truth = None
    size = prediction.anomaly_map.shape
    if sample is not None:
        from harness.data import read_mask_stack, read_rgb

        image = read_rgb(sample.images["rgb"], size)
        ground_truth = read_mask_stack(sample, size).any(axis=0)
    found = [by_run[run_id].get(prediction.sample_id) for _, run_id in columns]
    return plots.GallerySample(
        f"{name}:\n{prediction.sample_id}", image, ground_truth,
        [np.asarray(p.anomaly_map) if p is not None and p.anomaly_map.shape == size else None for p in found],
        [p.score if p is not None else None for p in found])


def _samples_by_id(config: dict, wanted: set[str]) -> tuple[dict, str | None]:
    """The dataset's samples with these ids, or an explanation of why the data is not reachable."""
    dataset, root = config.get("dataset"), config.get("data_root")
    try:
        from harness.data import load_dataset

        index = load_dataset(dataset, root, classes=config.get("classes"), check_counts=False,
                             options=config.get("dataset_options") or None)
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


__all__ = ["choose_gallery_samples", "f1_max_threshold", "gallery_samples_per_class", "per_class_heatmap",
           "provenance_table", "render_html", "write_html"]
