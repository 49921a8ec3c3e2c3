"""Reference checks against the papers' numbers (issue 13 item 4) on a real result store whose stored metrics
MetricAccumulator computed from the same sample scores the bootstrap resamples.

UniLEAD on MVTec AD, the paper's bottlenecks (unilead_paper.yaml, tolerance 1 point):
 - paper preset, softmax: I-AUROC 97.78 against Table 1's 97.8, within;
 - paper preset, gumbel_top1: I-AUROC well under Table 3's 97.5, below, its interval far from it;
 - paper preset, top1: I-AUROC 95.00 against 97.1, outside the tolerance, inside its bootstrap interval;
 - cpu preset, softmax: not comparable, whatever its value;
and AnomalyMoE's Table 1 (one model over eight datasets): not comparable for a paper-preset row (own store).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from rich.console import Console

from harness.config import ConfigError
from harness.report.csv_table import render_csv
from harness.report.html import render_html
from harness.report.leaderboard import build_leaderboard
from harness.report.markdown import render_markdown
from harness.report.reference_check import ABOVE, BELOW, NOT_COMPARABLE, WITHIN
from harness.report.table import CHECK_COLUMNS, TERMINAL_CHECK_COLUMNS, reference_check_table
from harness.report.terminal import render_terminal
from harness.report.uncertainty import BootstrapSettings
from harness.reported import load_reported
from harness.results import ResultStore
from scored_runs import write_scored_run

CLASSES = ("bottle", "grid")
PER_LABEL = 30  # normal and anomalous test images per class
BOTTLENECKS = [16, 32, 64, 128]
ANOMALYMOE_PAPER = {"patch_experts": 6, "global_experts": 6, "component_experts": 6, "top_k": 3,
                    "esb_weight": 0.01, "eir_weight": 0.0001}


def _images() -> list[tuple[str, str, int]]:
    return [(f"{c}/{'good' if label == 0 else 'crack'}/{i:03d}", c, label)
            for c in CLASSES for label in (0, 1) for i in range(PER_LABEL)]


def _ordered_scores(misplaced: int, images) -> np.ndarray:
    """Normals score 0..29, anomalies 100.., except that in each class the first anomalies score below
    ``misplaced`` (normal, anomalous) pairs in all: I-AUROC 1 - misplaced / 900 in each class."""
    anomalous, left = [], misplaced
    for index in range(PER_LABEL):
        below = min(left, PER_LABEL)
        anomalous.append(PER_LABEL - below - 0.5 if below else 100.0 + index)
        left -= below
    return np.array(([float(i) for i in range(PER_LABEL)] + anomalous) * len(CLASSES))


def _noisy_scores(separation: float, images) -> np.ndarray:
    rng = np.random.default_rng(7)
    labels = np.array([label for _, _, label in images])
    return np.round(rng.normal(size=len(images)) + separation * labels, 3)


def _write_run(store: ResultStore, run_id: str, method: str, preset: str, method_config: dict, scores, images,
               dataset: str = "mvtec_ad") -> None:
    write_scored_run(store, run_id, images, scores, method=method, preset=preset, dataset=dataset,
                     method_config=method_config, sweep="checks", map_scale=0.001)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("reference_check") / "results")
    images = _images()
    unilead = lambda routing: {"routing": routing, "bottlenecks": BOTTLENECKS}  # noqa: E731
    _write_run(store, "within", "unilead", "paper", unilead("softmax"), _ordered_scores(20, images), images)
    _write_run(store, "below", "unilead", "paper", unilead("gumbel_top1"), _noisy_scores(1.2, images), images)
    _write_run(store, "interval", "unilead", "paper", unilead("top1"), _ordered_scores(45, images), images)
    _write_run(store, "cpu", "unilead", "cpu", unilead("softmax"), _ordered_scores(20, images), images)
    return store


def _check(board, run_id: str, metric: str = "i_auroc"):
    row = next(row for row in board.rows if row.complete_run_ids == [run_id])
    return next(check for check in row.reference_checks if check.metric == metric)


def test_statuses_follow_the_tolerance_the_interval_and_the_preset(store):
    board = build_leaderboard(store, bootstrap=BootstrapSettings(resamples=300))
    within = _check(board, "within")
    assert within.measured == pytest.approx(1 - 20 / 900) and within.reported.value == pytest.approx(0.978)
    assert within.status == WITHIN and within.reason == "" and within.status_text == "within"
    assert within.reported.tolerance == pytest.approx(0.01)

    below = _check(board, "below")
    assert below.status == BELOW and below.measured < 0.9 and below.interval.high < below.reported.value
    assert below.status_text == f"below by {100 * (below.reported.value - below.measured):.2f}"

    by_interval = _check(board, "interval")
    assert abs(by_interval.difference) > by_interval.reported.tolerance
    assert by_interval.interval.low <= by_interval.reported.value <= by_interval.interval.high
    assert by_interval.status == WITHIN and "interval contains the reported value" in by_interval.explained

    cpu = _check(board, "cpu")
    assert cpu.status == NOT_COMPARABLE and cpu.measured is None and "preset cpu" in cpu.reason


def test_a_protocol_ours_does_not_follow_is_not_comparable(tmp_path):
    joint = ResultStore(tmp_path / "results")
    images = _images()
    _write_run(joint, "joint", "anomalymoe", "paper", ANOMALYMOE_PAPER, _ordered_scores(20, images), images)
    check = _check(build_leaderboard(joint, bootstrap=None), "joint")
    assert check.status == NOT_COMPARABLE and check.reported.source == "AnomalyMoE Table 1"
    assert "one model trained jointly over eight datasets" in check.reason


def test_without_intervals_the_tolerance_alone_decides(store):
    board = build_leaderboard(store, bootstrap=None)
    assert _check(board, "interval").status == BELOW and _check(board, "within").status == WITHIN


def test_a_reproduction_above_the_tolerance_is_flagged_above(store, tmp_path):
    high = ResultStore(tmp_path / "results")
    images = _images()
    _write_run(high, "perfect", "unilead", "paper", {"routing": "first", "bottlenecks": BOTTLENECKS},
               _ordered_scores(0, images), images)
    check = _check(build_leaderboard(high), "perfect")
    assert check.status == ABOVE and check.status_text == "above by 3.50" and check.interval.low == 1.0


def test_every_view_shows_the_checks(store):
    board = build_leaderboard(store, bootstrap=BootstrapSettings(resamples=300))
    table = reference_check_table(board)
    assert table.headers == ["Configuration", *CHECK_COLUMNS[1:]]
    within = _check(board, "within")
    line = dict(zip(table.headers, next(cells for cells in table.rows if cells[-1] == "within" and "I-AUROC" in cells)))
    assert line["Paper"] == "97.80" and line["Source"] == "UniLEAD: Table 1" and line["Measured"] == "97.78"
    assert line["Interval"] == f"[{100 * within.interval.low:.2f}, {100 * within.interval.high:.2f}]"
    assert line["Difference"] == "-0.02" and line["Tolerance"] == "±1.00"
    statuses = dict(zip(map(tuple, table.rows), table.row_status))
    assert statuses[tuple(line.values())] == "complete"
    assert any(cells[-1].startswith("below by") and statuses[tuple(cells)] == "failed" for cells in table.rows)
    assert table.footnotes[0].startswith(f"{len(table.rows)} reference checks, tolerance ±1.00 points: ")
    assert any(note.endswith("I-AUROC, P-AUROC: preset cpu; only the paper preset is checked") for note in table.footnotes)

    markdown = render_markdown(board)
    assert "## Reference check" in markdown and "| 97.80 | UniLEAD: Table 1 | 97.78 |" in markdown
    assert "| within (interval) |" in markdown and "bootstrap interval contains the reported value" in markdown
    page = render_html(board, store)
    assert "<h2>Reference check</h2>" in page and ">within (interval)</td>" in page

    mean_rows = [r for r in csv.DictReader(io.StringIO(render_csv(board))) if r["class_name"] == "mean"]
    checked = [r["i_auroc_reference_check"] for r in mean_rows]
    assert within.explained in checked and any(c.startswith("below by") for c in checked)
    assert sum(c.startswith("not comparable: preset cpu") for c in checked) == 1
    assert any(c.startswith("within (interval): outside the tolerance") for c in checked)


@pytest.mark.parametrize("width, headers", [(320, CHECK_COLUMNS), (80, TERMINAL_CHECK_COLUMNS[-1])])
def test_the_terminal_shows_the_widest_layout_that_fits(store, width, headers):
    board = build_leaderboard(store, bootstrap=BootstrapSettings(resamples=300))
    console = Console(width=width, record=True)
    render_terminal(board, console)
    text = console.export_text()
    section = text[text.index("Reference check"):]
    header_line = next(line for line in section.splitlines() if "Configuration" in line)
    assert [cell.strip() for cell in header_line.strip("┃ ").split("┃")] == list(headers)
    assert "…" not in section.split("reference checks")[0] and "below by" in section.replace("\n", " ")


def test_a_row_on_the_embedded_dataset_has_no_check_line(tmp_path):
    embedded = ResultStore(tmp_path / "results")
    images = _images()
    _write_run(embedded, "embedded", "unilead", "paper", {"routing": "softmax", "bottlenecks": BOTTLENECKS},
               _ordered_scores(20, images), images, dataset="embedded")
    board = build_leaderboard(embedded, bootstrap=None)
    assert board.rows[0].reference_checks == [] and reference_check_table(board).rows == []
    assert "Reference check" not in render_markdown(board)


@pytest.mark.parametrize("header, message", [
    ("reference_check: {tolerance: -1}", "reference_check.tolerance must be a non-negative number"),
    ("reference_check: {tolerence: 1}", "reference_check must be a mapping with keys among"),
    ("reference_check: {not_comparable: {Table 9: joint}}", "names sources no entry has: ['Table 9']"),
])
def test_bad_reference_check_fields_are_named(tmp_path, header, message):
    path = tmp_path / "paper.yaml"
    path.write_text(f"paper: p\nunit: percent\n{header}\nentries:\n"
                    "  - {source: Table 1, method: unilead, dataset: mvtec_ad, config: {}, metric: i_auroc, value: 97}\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_reported(tmp_path)


def test_an_entry_tolerance_overrides_the_file_and_reasons_go_by_source(tmp_path):
    (tmp_path / "paper.yaml").write_text(
        "paper: p\nunit: percent\nreference_check: {tolerance: 2, not_comparable: {Table 2: joint model}}\nentries:\n"
        "  - {source: Table 1, method: unilead, dataset: mvtec_ad, config: {}, metric: i_auroc, value: 97, tolerance: 0.5}\n"
        "  - {source: Table 2, method: unilead, dataset: mvtec_ad, config: {}, metric: p_auroc, value: 96}\n")
    first, second = load_reported(tmp_path)
    assert first.tolerance == pytest.approx(0.005) and first.not_comparable == ""
    assert second.tolerance == pytest.approx(0.02) and second.not_comparable == "joint model"
