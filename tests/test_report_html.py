"""The HTML report of a routing-sweep-like store built from real parts: a tiny MVTec AD tree, maps
and metrics computed by the harness's own accumulator (so bootstrap intervals attach), routing rows
and prediction artefacts for every configuration; and the report's plot and gallery pieces."""

from __future__ import annotations

import csv
import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import load_dataset, read_mask_stack
from harness.data.fixtures import write_fixture
from harness.metrics import MetricAccumulator
from harness.report import plots
from harness.report.csv_table import render_csv
from harness.report.html import (
    f1_max_threshold,
    gallery_samples_per_class,
    per_class_heatmap,
    provenance_table,
    render_html,
)
from harness.report.leaderboard import build_leaderboard
from harness.report.markdown import render_markdown
from harness.report.table import format_summary
from harness.report.uncertainty import BootstrapSettings
from harness.results import ResultStore, TrialResult
from harness.results.predictions import read_predictions, write_predictions

CLASSES = ["bottle", "grid"]
MODES = {"softmax": 2.0, "gumbel_top1": 1.6, "top1": 1.2, "first": 0.6}  # separation of anomalous from normal
SEEDS = (0, 1)
MAP_SIZE = (16, 16)


def build_routing_store(base: Path, seeds=SEEDS) -> ResultStore:
    """Four routing modes x seeds on a fixture tree; all metrics from the harness's accumulator."""
    data_root = base / "mvtec"
    write_fixture("mvtec_ad", data_root)
    samples = load_dataset("mvtec_ad", data_root, classes=CLASSES, check_counts=False).split("test")
    masks = np.stack([read_mask_stack(s, MAP_SIZE).any(axis=0) for s in samples])
    labels = np.array([s.label for s in samples])
    store = ResultStore(base / "results")
    for k, (mode, separation) in enumerate(MODES.items()):
        for seed in seeds:
            rng = np.random.default_rng(100 * k + seed)
            maps = (separation * masks + rng.normal(0, 0.6, masks.shape)).astype(np.float16)
            scores = maps.reshape(len(samples), -1).astype(np.float64).max(axis=1)
            _write_run(store, data_root, mode, seed, samples, scores, maps, masks, labels)
    return store


def _write_run(store, data_root, mode, seed, samples, scores, maps, masks, labels) -> None:
    accumulator = MetricAccumulator()
    accumulator.update(scores, labels, maps, masks, [s.class_name for s in samples], sample_ids=[s.sample_id for s in samples])
    metrics = [{"class_name": r.class_name, "metric": r.metric, "value": r.value} for r in accumulator.compute().rows]
    config = {"method": "unilead", "preset": "cpu", "dataset": "mvtec_ad", "data_root": str(data_root), "classes": CLASSES,
              "seed": seed, "method_config": {"routing": mode}}
    run_id = f"{mode}-{seed}"
    run = {"run_id": run_id, "sweep": "routing", "label": f"routing={mode} seed={seed}", "method": "unilead",
           "preset": "cpu", "dataset": "mvtec_ad", "seed": seed, "config_json": config,
           "method_config_json": {"routing": mode, "epochs": 2}, "params_trainable": 1_420_000 + seed,
           "flops_reconstruction_g": {"softmax": 1.93, "gumbel_top1": 1.2, "top1": 1.1, "first": 0.9}[mode],
           "command_line": "harness sweep sweeps/routing.yaml"}
    rows = [{"sample_id": s.sample_id, "class_name": s.class_name, "defect_type": s.defect_type, "label": s.label,
             "score": float(score)} for s, score in zip(samples, scores)]
    routing = [{"class_name": c, "layer": f"decoder.{layer}", "expert": f"adapter_d{d}", "gate_mean": 0.25,
                "selection_freq": 0.1 * (i + 1), "entropy": math.log(4) * (0.5 + 0.1 * layer), "samples": 2}
               for c in CLASSES for layer in range(3) for i, d in enumerate((16, 32, 64, 128))]
    store.write_run(TrialResult(run, metrics, rows, routing))
    write_predictions(store.predictions_path(run_id), [{**row, "anomaly_map": m} for row, m in zip(rows, maps)])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_routing_store(tmp_path_factory.mktemp("report_html"))


@pytest.fixture(scope="module")
def board(store):
    return build_leaderboard(store, sweep="routing", bootstrap=BootstrapSettings(resamples=200))


@pytest.fixture(scope="module")
def page(board, store):
    return render_html(board, store)


class _Tables(HTMLParser):
    """Every table of a page: its headers, its cells' text and class attributes, and whether it sits in a scroll box."""

    def __init__(self):
        super().__init__()
        self.tables, self._scroll, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self._scroll.append("scroll" in (attrs.get("class") or "").split())
        elif tag == "table":
            self.tables.append({"scrolls": bool(self._scroll and self._scroll[-1]), "headers": [], "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, "", (attrs.get("class") or "").split()]

    def handle_endtag(self, tag):
        if tag == "div":
            self._scroll.pop()
        elif tag in ("td", "th") and self._cell:
            kind, text, classes = self._cell
            if kind == "th":
                self.tables[-1]["headers"].append(text)
            else:
                self.tables[-1]["rows"][-1].append((text, classes))
            self._cell = None

    def handle_data(self, data):
        if self._cell:
            self._cell[1] += data


def _tables(page: str) -> list[dict]:
    parser = _Tables()
    parser.feed(page)
    for table in parser.tables:
        table["rows"] = [row for row in table["rows"] if row]
    return parser.tables


def test_every_table_sits_in_a_scroll_box_and_the_main_table_leaves_efficiency_apart(page):
    tables = _tables(page)
    assert tables and all(table["scrolls"] for table in tables)
    main = tables[0]
    assert "I-AUROC" in main["headers"] and "AUPRO@1%" in main["headers"]
    assert not {"GFLOPs", "Params (trainable)"} & set(main["headers"])
    assert any("GFLOPs" in table["headers"] for table in tables[1:])  # the efficiency table
    assert "<h2>Efficiency</h2>" in page and "<h2>Provenance</h2>" in page


def test_the_best_value_of_each_metric_column_is_marked(page, board):
    main = _tables(page)[0]
    for metric in ("i_auroc", "aupro"):
        column = main["headers"].index({"i_auroc": "I-AUROC", "aupro": "AUPRO"}[metric])
        marked = [i for i, row in enumerate(main["rows"]) if "best" in row[column][1]]
        top = max(100 * row.metrics[metric].mean for row in board.rows)
        shown = [float(re.match(r"[\d.]+", row[column][0]).group()) for row in main["rows"]]
        assert marked and all(shown[i] == round(top, 2) for i in marked)
        assert all(shown[i] < round(top, 2) for i in range(len(shown)) if i not in marked)
    assert "best" not in main["rows"][0][1][1]  # the configuration column is never marked
    assert "text" in main["rows"][0][1][1] and "text" not in main["rows"][0][-2][1]  # names left, numbers right


def test_per_class_results_are_one_table_shaded_per_metric_column(board, page):
    table, shades, intervals = per_class_heatmap(board)
    assert table.headers[:2] == ["Class", "Configuration"] and table.headers[2:] == [
        "I-AUROC", "P-AUROC", "AUPRO", "I-AP", "P-AP", "I-F1max", "P-F1max", "AUPRO@5%", "AUPRO@1%", "AUPIMO"]
    assert [row[0] for row in table.rows] == [c for c in [*CLASSES, "mean", "pooled"] for _ in MODES]
    softmax_mean = next(row for row in table.rows if row[:2] == ["mean", "routing=softmax"])
    assert softmax_mean[2] == format_summary(board.row("routing=softmax").metrics["i_auroc"])
    softmax_ci = board.row("routing=softmax").intervals["bottle"]["i_auroc"]
    assert intervals[0][0] == f"[{100 * softmax_ci.low:.2f}, {100 * softmax_ci.high:.2f}]"
    assert f"title='95% bootstrap interval {intervals[0][0]}'" in page
    column = [line[0] for line in shades]
    values = [float(row[2].split()[0]) for row in table.rows]
    assert column[values.index(min(values))] == 0.0 and column[values.index(max(values))] == 1.0
    assert page.count("<h3>I-AUROC</h3>") == 0 and page.count("style='background:#") == sum(
        s is not None for line in shades for s in line)


def test_provenance_lists_every_run_with_revision_versions_hardware_and_command(board, store):
    import torch

    table, summary = provenance_table(board, store)
    assert len(table.rows) == len(MODES) * len(SEEDS)
    assert {row[table.headers.index("Torch")] for row in table.rows} == {torch.__version__}
    assert {row[table.headers.index("Command line")] for row in table.rows} == {"harness sweep sweeps/routing.yaml"}
    revision = table.rows[0][table.headers.index("Git revision")]
    assert len(revision.removesuffix("-dirty")) == 12 and summary.startswith(f"{len(table.rows)} run(s); git revision")


def test_metric_axes_start_at_a_round_floor_far_enough_below_the_points():
    assert plots.metric_axis_floor(92.58) == 80.0  # 0.4 points between 92.58 and 92.97 stay small on 20 points
    assert plots.metric_axis_floor(99.9) == 80.0
    assert plots.metric_axis_floor(55.0) == 50.0 and plots.metric_axis_floor(12.0) == 0.0


def test_legends_say_how_many_seeds():
    assert plots.seed_legend([1, 1]) == "this harness: 1 seed (no spread over seeds)"
    assert plots.seed_legend([3, 3]) == "this harness: mean ± std over 3 seeds"
    assert "1 to 3" in plots.seed_legend([1, 3])


def test_gflops_take_the_x_axis_where_parameters_barely_change(board, tmp_path):
    assert plots.efficiency_axis(board) == "flops_reconstruction_g"
    for row, params in zip(board.rows, (1e6, 2e6, 4e6, 8e6)):
        row.efficiency = {**row.efficiency, "params_trainable": params}
    try:
        assert plots.efficiency_axis(board) == "params_trainable"
    finally:
        for row in board.rows:
            row.efficiency = {**row.efficiency, "params_trainable": 1_420_000.5}


def test_router_entropy_is_shown_over_its_uniform_value_per_layer():
    rows = [{"run_id": "r", "class_name": c, "layer": f"l{layer}", "expert": f"e{e}", "entropy": math.log(4) * share,
             "gate_mean": 0.25, "selection_freq": 0.25} for c in ("a", "b") for layer, share in ((0, 1.0), (1, 0.5))
            for e in range(4)]
    grid, layers, classes = plots.router_entropy_grid(rows)
    assert layers == ["l0", "l1"] and classes == ["a", "b"] and np.allclose(grid, [[1.0, 1.0], [0.5, 0.5]])
    assert plots.router_entropy_heatmap(rows, "t").startswith(b"\x89PNG")
    assert plots.layer_expert_heatmap(rows, "gate_mean", "t").startswith(b"\x89PNG")


def test_f1_max_threshold_maximises_pixel_f1():
    rng = np.random.default_rng(0)
    masks = [rng.random((8, 8)) < 0.2 for _ in range(3)]
    maps = [(m * 1.0 + rng.normal(0, 0.5, m.shape)).astype(np.float16) for m in masks]
    values = np.concatenate([m.ravel() for m in maps]).astype(np.float32)
    truth = np.concatenate([m.ravel() for m in masks])

    def f1(t):
        predicted = values >= t
        return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())

    best = f1_max_threshold(maps, masks)
    assert f1(best) == max(f1(t) for t in np.unique(values))
    assert f1_max_threshold(maps, [np.zeros_like(m) for m in masks]) is None


def test_gallery_shows_a_few_samples_per_class_for_every_configuration(store, board, page):
    predictions = list(read_predictions(store.predictions_path("softmax-0")))
    chosen = gallery_samples_per_class(predictions)
    assert [p.class_name for _, p in chosen] == sorted(p.class_name for _, p in chosen)
    assert {name for name, _ in chosen} == {"best anomalous", "worst anomalous", "worst normal"}
    assert len(chosen) == 3 * len(CLASSES)
    gallery = page.split("<h2>Anomaly maps</h2>")[1].split("<h2>")[0]
    assert gallery.count("<img") == len(CLASSES)
    assert all(f"routing={mode} (run {mode}-0)" in gallery for mode in MODES)
    assert "could not be read" not in gallery and "No thresholded maps" not in gallery


def test_the_gallery_widens_by_two_panels_per_configuration():
    sample = plots.GallerySample("s", np.zeros((8, 8, 3), np.uint8), np.eye(8, dtype=bool), [np.eye(8)] * 2, [1.0, 2.0])
    columns = [plots.GalleryColumn("a", 0.0, 1.0, 0.5), plots.GalleryColumn("b", 0.0, 1.0, None)]
    one = Image.open(io.BytesIO(plots.comparison_gallery("c", [sample], columns[:1])))
    two = Image.open(io.BytesIO(plots.comparison_gallery("c", [sample], columns)))
    assert two.size[0] > 1.5 * one.size[0]


def test_one_unit_percent_in_csv_markdown_and_html(board, page):
    rows = list(csv.DictReader(io.StringIO(render_csv(board))))
    softmax = next(r for r in rows if r["configuration"] == "routing=softmax" and r["class_name"] == "mean")
    shown = f"{float(softmax['i_auroc_mean']):.2f}"
    assert shown == f"{100 * board.row('routing=softmax').metrics['i_auroc'].mean:.2f}"
    assert float(softmax["i_auroc_ci_low"]) <= float(softmax["i_auroc_mean"]) <= float(softmax["i_auroc_ci_high"])
    assert float(softmax["i_auroc_mean"]) > 1.0  # percent, not a fraction
    assert shown in render_markdown(board) and f"<span class='value'>{shown}" in page
