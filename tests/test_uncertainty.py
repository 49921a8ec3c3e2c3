"""Bootstrap intervals and tie tests on leaderboards built from real result stores whose stored metrics
were computed by MetricAccumulator from the same per-sample scores the bootstrap resamples."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from rich.console import Console

from harness.metrics import MetricAccumulator
from harness.metrics.image_scores import ImageRecord, image_metrics
from harness.report.csv_table import render_csv
from harness.report.html import render_html
from harness.report.leaderboard import build_leaderboard
from harness.report.markdown import render_markdown
from harness.report.table import leaderboard_table
from harness.report.terminal import render_terminal
from harness.report.uncertainty import (
    BootstrapSettings,
    image_metric_draws,
    paired_tie_test,
    stratified_multiplicities,
)
from harness.results import ResultStore, TrialResult
from scored_runs import write_scored_run

CLASSES = ("bottle", "grid")
NORMAL, ANOMALOUS = 12, 8  # per class
SEEDS = (0, 1, 2)


def _test_images() -> list[tuple[str, str, int]]:
    return [(f"{c}/{'good' if label == 0 else 'crack'}/{i:03d}", c, label)
            for c in CLASSES for label, n in ((0, NORMAL), (1, ANOMALOUS)) for i in range(n)]


def _scores(separation: float, seed: int, images) -> np.ndarray:
    """Normal scores around 0, anomalous around ``separation``, noise fixed by the seed."""
    rng = np.random.default_rng(1000 + seed)
    labels = np.array([label for _, _, label in images])
    return np.round(rng.normal(size=len(images)) + separation * labels, 3)


def _write_run(store: ResultStore, routing: str, seed: int, scores: np.ndarray, images) -> None:
    write_scored_run(store, f"{routing}-{seed}", images, scores, method="unilead", preset="cpu", dataset="embedded",
                     seed=seed, method_config={"routing": routing}, sweep="routing", map_scale=0.1,
                     record_method_config=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """strong and its exact copy (identical scores seed by seed), and a weak configuration: 3 seeds each."""
    store = ResultStore(tmp_path_factory.mktemp("uncertainty") / "results")
    images = _test_images()
    for seed in SEEDS:
        strong = _scores(2.5, seed, images)
        _write_run(store, "softmax", seed, strong, images)
        _write_run(store, "top1", seed, strong, images)
        _write_run(store, "first", seed, _scores(0.2, seed, images), images)
    return store


def test_stratification_keeps_each_class_label_count():
    images = _test_images()
    classes = np.array([c for _, c, _ in images], dtype=object)
    labels = np.array([label for _, _, label in images])
    counts = stratified_multiplicities(classes, labels, 200, seed=3)
    assert counts.shape == (200, len(images))
    for c in CLASSES:
        for label, n in ((0, NORMAL), (1, ANOMALOUS)):
            stratum = (classes == c) & (labels == label)
            assert (counts[:, stratum].sum(axis=1) == n).all()
    assert (counts.max(axis=1) > 1).all()  # drawn with replacement, not a permutation
    assert (stratified_multiplicities(classes, labels, 200, seed=3) == counts).all()
    assert (stratified_multiplicities(classes, labels, 200, seed=4) != counts).any()


def test_weighted_metrics_equal_the_exact_metrics_of_the_duplicated_images():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=30), 1)  # rounding makes ties, which must count as curves.py counts them
    labels = (np.arange(30) % 3 == 0).astype(np.int64)
    weights = rng.integers(0, 4, size=(5, 30))
    weights[:, :2] = 1  # keep both labels present
    draws = image_metric_draws(scores, labels, weights)
    for b in range(5):
        records = [ImageRecord(f"{i}#{k}", scores[i], int(labels[i]), "") for i in range(30) for k in range(weights[b, i])]
        exact = image_metrics(records, "resample")
        for metric in ("i_auroc", "i_ap", "i_f1max"):
            assert draws[metric][b] == pytest.approx(exact[metric][0], abs=1e-12)


def test_intervals_are_reproducible_and_contain_the_point_estimate(store):
    board = build_leaderboard(store, sort_metric="i_auroc")
    again = build_leaderboard(store, sort_metric="i_auroc")
    other_seed = build_leaderboard(store, bootstrap=BootstrapSettings(resamples=1000, seed=7))
    for row in board.rows:
        assert row.uncertainty_note == "" and row.metrics["i_auroc"].n == 3
        for group, summaries in [("mean", row.metrics), ("pooled", row.pooled), *row.per_class.items()]:
            for metric in ("i_auroc", "i_ap", "i_f1max"):
                ci = row.intervals[group][metric]
                assert ci.resamples == 1000 and ci.low <= summaries[metric].mean <= ci.high
                assert ci.low < ci.high
                assert again.row(row.label).intervals[group][metric] == ci
        assert other_seed.row(row.label).intervals["mean"]["i_auroc"] != row.intervals["mean"]["i_auroc"]
        assert "p_auroc" not in row.intervals["mean"]  # the pixel bootstrap is opt-in


def test_identical_scores_are_tied_and_a_clearly_worse_row_is_not(store):
    board = build_leaderboard(store, sort_metric="i_auroc")
    assert [row.label for row in board.rows] == ["routing=softmax", "routing=top1", "routing=first"]
    best, copy, weak = board.rows
    assert best.tie is None
    assert copy.tie.tied is True and copy.tie.p_value == 1.0
    assert weak.tie.tied is False and weak.tie.p_value < 0.05
    assert [cells[0] for cells in leaderboard_table(board).rows] == ["1", "≈1", "3"]


def test_paired_test_on_a_small_difference_is_not_significant():
    rng = np.random.default_rng(0)
    best = rng.normal(0.90, 0.02, size=1000)
    assert paired_tie_test(best, best - 0.001 + rng.normal(0, 0.01, size=1000), "i_auroc", 0.95).tied is True
    assert paired_tie_test(best, best - 0.05, "i_auroc", 0.95).tied is False


def test_rows_scored_on_other_images_get_no_paired_test(store, tmp_path):
    import shutil

    copy = ResultStore(shutil.copytree(store.root, tmp_path / "copy"))
    fewer = _test_images()[1:]  # one normal bottle image left out
    for seed in SEEDS:
        _write_run(copy, "first", seed, _scores(0.2, seed, fewer), fewer)
    board = build_leaderboard(copy)
    weak = board.row("routing=first")
    assert weak.tie.tied is None and "other test images" in weak.tie.reason
    assert "mean" in weak.intervals  # its own interval still stands
    assert "routing=first: no tie test (scored other test images than the best row; no paired test)" in render_markdown(board)


def test_views_show_intervals_ties_and_the_test(store):
    board = build_leaderboard(store)
    mean = board.row("routing=softmax").metrics["i_auroc"]
    ci = board.row("routing=softmax").intervals["mean"]["i_auroc"]
    cell = f"{100 * mean.mean:.2f} ± {100 * mean.std:.2f} [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"

    console = Console(record=True, width=250)
    render_terminal(board, console)
    text = console.export_text()
    assert cell in text and "≈1" in text and "paired bootstrap" in text and "1000 resamples" in text

    narrow = Console(record=True, width=80)
    render_terminal(board, narrow)  # the intervals get a table of their own rather than cut cells
    lines = [line.rstrip() for line in narrow.export_text().splitlines()]
    assert max(len(line) for line in lines) <= 80 and "Bootstrap intervals (class mean)" in lines
    assert any("≈1" in line and "routing=top1" in line and f"[{100 * ci.low:.2f}, {100 * ci.high:.2f}]" in line for line in lines)

    markdown = render_markdown(board)
    assert f"| 1 | routing=softmax | 3/3 | {cell} |" in markdown
    assert "| ≈1 | routing=top1 |" in markdown and "two-sided, 5% level" in markdown
    assert "No interval on P-AUROC" in markdown

    rows = list(csv.DictReader(io.StringIO(render_csv(board))))
    by_label = {r["configuration"]: r for r in rows if r["class_name"] == "mean"}
    assert float(by_label["routing=softmax"]["i_auroc_ci_low"]) == pytest.approx(100 * ci.low)  # CSV in percent, as every view
    assert by_label["routing=softmax"]["tied_with_best"] == ""
    assert by_label["routing=top1"]["tied_with_best"] == "true" and by_label["routing=first"]["tied_with_best"] == "false"
    assert float(by_label["routing=first"]["p_vs_best"]) < 0.05 and by_label["routing=first"]["p_auroc_ci_low"] == ""
    bottle = next(r for r in rows if r["configuration"] == "routing=softmax" and r["class_name"] == "bottle")
    assert float(bottle["i_auroc_ci_low"]) < float(bottle["i_auroc_mean"]) < float(bottle["i_auroc_ci_high"])

    page = render_html(board, store)
    value, interval = cell.split(" [")
    assert f"<span class='value'>{value}</span><br><span class='ci'>[{interval}</span>" in page
    assert "<td>≈1</td>" in page and "paired bootstrap" in page and "[95% bootstrap interval over the test images]" in page


def test_no_bootstrap_leaves_the_cells_as_before(store):
    board = build_leaderboard(store, bootstrap=None)
    assert all(row.intervals == {} and row.tie is None for row in board.rows)
    table = leaderboard_table(board)
    assert table.legend == [] and "[" not in " ".join(table.rows[0]) and table.rows[1][0] == "2"


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="resamples must be at least 1, got 0"):
        BootstrapSettings(resamples=0)
    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1, got 1.5"):
        BootstrapSettings(confidence=1.5)


def test_pixel_bootstrap_resamples_whole_images_through_the_accumulator_state(tmp_path):
    from harness.data import load_dataset, read_mask_stack
    from harness.data.fixtures import write_fixture
    from harness.results.predictions import write_predictions

    data_root = tmp_path / "mvtec"
    write_fixture("mvtec_ad", data_root)
    samples = load_dataset("mvtec_ad", data_root, classes=["bottle", "grid"], check_counts=False).split("test")
    store = ResultStore(tmp_path / "results")
    rng = np.random.default_rng(0)
    for routing, noise in (("softmax", 0.3), ("first", 3.0)):
        for seed in (0, 1):
            masks = np.stack([read_mask_stack(s, (16, 16)).any(axis=0) for s in samples])
            maps = (masks + noise * rng.random(masks.shape)).astype(np.float16)
            scores = maps.reshape(len(samples), -1).max(axis=1).astype(np.float64)
            accumulator = MetricAccumulator()
            accumulator.update(scores, [s.label for s in samples], maps, masks, [s.class_name for s in samples],
                               sample_ids=[s.sample_id for s in samples])
            metrics = [{"class_name": r.class_name, "metric": r.metric, "value": r.value} for r in accumulator.compute().rows]
            config = {"method": "unilead", "preset": "cpu", "dataset": "mvtec_ad", "data_root": str(data_root),
                      "classes": ["bottle", "grid"], "seed": seed, "method_config": {"routing": routing}}
            run_id = f"{routing}-{seed}"
            rows = [{"sample_id": s.sample_id, "class_name": s.class_name, "defect_type": s.defect_type, "label": s.label,
                     "score": float(score)} for s, score in zip(samples, scores)]
            write_predictions(store.predictions_path(run_id), [{**r, "anomaly_map": m} for r, m in zip(rows, maps)])
            store.write_run(TrialResult({"run_id": run_id, "sweep": "px", "method": "unilead", "preset": "cpu",
                                         "dataset": "mvtec_ad", "seed": seed, "config_json": config}, metrics, rows, []),
                            provenance=False)
    settings = BootstrapSettings(resamples=200, pixel_resamples=40, seed=1)
    board = build_leaderboard(store, sort_metric="p_auroc", bootstrap=settings)
    best, worse = board.rows
    assert best.label == "routing=softmax" and best.uncertainty_note == ""
    for row in board.rows:
        for group, summaries in [("mean", row.metrics), *row.per_class.items()]:
            for metric in ("p_auroc", "p_ap", "aupro"):
                ci = row.intervals[group][metric]
                assert ci.resamples == 40 and ci.low <= summaries[metric].mean <= ci.high
    assert worse.tie.metric == "p_auroc" and worse.tie.tied is False
    again = build_leaderboard(store, sort_metric="p_auroc", bootstrap=settings)
    assert again.row("routing=first").intervals["mean"]["aupro"] == worse.intervals["mean"]["aupro"]
    assert "No interval on" not in render_markdown(board)

    import shutil

    shutil.rmtree(data_root)  # masks out of reach: image intervals stay, the note says why pixel ones are missing
    unreachable = build_leaderboard(store, sort_metric="p_auroc", bootstrap=settings).row("routing=first")
    assert unreachable.uncertainty_note.startswith("no pixel interval:") and str(data_root) in unreachable.uncertainty_note
    assert "i_auroc" in unreachable.intervals["mean"] and "p_auroc" not in unreachable.intervals["mean"]


def test_leaderboard_command_bootstrap_options(store, capsys):
    from harness.cli import main

    def mean_rows(*options):
        assert main(["leaderboard", str(store.root), "--format", "csv", *options]) == 0
        rows = csv.DictReader(io.StringIO(capsys.readouterr().out))
        return {r["configuration"]: r for r in rows if r["class_name"] == "mean"}

    default = mean_rows()
    assert default["routing=top1"]["tied_with_best"] == "true" and default["routing=softmax"]["i_auroc_ci_low"] != ""
    reseeded = mean_rows("--bootstrap", "200", "--bootstrap-seed", "5")
    assert reseeded["routing=softmax"]["i_auroc_ci_low"] != default["routing=softmax"]["i_auroc_ci_low"]
    assert mean_rows("--bootstrap", "200", "--bootstrap-seed", "5") == reseeded
    plain = mean_rows("--no-bootstrap")
    assert plain["routing=softmax"]["i_auroc_ci_low"] == "" and plain["routing=top1"]["tied_with_best"] == ""
    with pytest.raises(SystemExit) as stop:
        main(["leaderboard", str(store.root), "--bootstrap", "0"])
    assert stop.value.code == 2 and "--bootstrap: expected a whole number >= 1, got '0'" in capsys.readouterr().err
