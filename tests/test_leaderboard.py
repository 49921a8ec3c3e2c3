"""Leaderboards generated from a real result store: aggregation over seeds, failed and missing cells,
reported paper numbers, and every renderer (terminal, Markdown, CSV, self-contained HTML)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness.cli import main
from harness.data import load_dataset
from harness.data.fixtures import write_fixture
from harness.report.csv_table import render_csv
from harness.report.html import choose_gallery_samples, render_html
from harness.report.leaderboard import build_leaderboard
from harness.report.markdown import render_markdown
from harness.report.table import reported_elsewhere_table
from harness.reported import load_reported
from harness.report.terminal import render_terminal
from harness.results import ResultStore, TrialResult
from harness.results.predictions import read_predictions, write_predictions
from harness.identity import trial_run_id
from harness.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["bottle", "grid"]
# routing mode -> per seed: i_auroc of the class mean, or "failed", or None (never ran)
PLAN = {
    "softmax": {0: 0.90, 1: 0.94},
    "gumbel_top1": {0: 0.80, 1: "failed"},
    "top1": {0: 0.70, 1: 0.70},
    "first": {0: None, 1: None},
}


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A routing sweep on a tiny MVTec AD tree: 8 cells, 5 complete, 1 failed, 2 missing."""
    base = tmp_path_factory.mktemp("leaderboard")
    data_root = base / "mvtec"
    write_fixture("mvtec_ad", data_root)
    spec = load_sweep(
        REPO / "sweeps" / "routing.yaml",
        overrides={"dataset": "mvtec_ad", "data_root": str(data_root), "classes": CLASSES, "results": str(base / "results")},
        assignments=["seeds=[0, 1]"],
    )
    trials = spec.trials()
    for trial in trials:
        trial.run_id = trial_run_id(trial.config, "1", "fingerprint")
    store = ResultStore(spec.results)
    store.write_trials(spec.name, trials)
    test_samples = load_dataset("mvtec_ad", data_root, classes=CLASSES, check_counts=False).split("test")
    for trial in trials:
        mode = trial.config["method_config"]["routing"]
        outcome = PLAN[mode][trial.seed]
        run = {"run_id": trial.run_id, "sweep": spec.name, "label": trial.label, "method": "unilead", "preset": "cpu",
               "dataset": "mvtec_ad", "seed": trial.seed, "config_json": trial.config, "axes_json": trial.axes}
        if outcome is None:
            continue
        if outcome == "failed":
            store.write_failure(trial.run_id, trial.config, "CUDA out of memory", sweep=spec.name)
            continue
        effective = {**trial.config["method_config"], "epochs": 2}
        metrics = []
        for metric, offset in (("i_auroc", 0.0), ("p_auroc", 0.05)):
            metrics += [
                {"class_name": "bottle", "metric": metric, "value": outcome + offset + 0.02},
                {"class_name": "grid", "metric": metric, "value": outcome + offset - 0.02},
                {"class_name": "mean", "metric": metric, "value": outcome + offset},
            ]
        routing = [{"class_name": c, "layer": f"decoder.{layer}", "expert": f"adapter_d{d}", "gate_mean": 0.25,
                    "selection_freq": 0.1 * (i + 1), "entropy": 1.0, "samples": 2}
                   for c in CLASSES for layer in range(2) for i, d in enumerate((16, 32, 64, 128))]
        run.update(method_config_json=effective, params_trainable=4_500_000 + trial.seed, params_total=8_000_000,
                   flops_reconstruction_g=1.9, wall_time_train_s=10.0 + trial.seed, infer_throughput_img_s=50.0,
                   peak_memory_mb=300.0)
        scores = [{"sample_id": s.sample_id, "class_name": s.class_name, "defect_type": s.defect_type,
                   "label": s.label, "score": float(i)} for i, s in enumerate(test_samples)]
        store.write_run(TrialResult(run, metrics, scores, routing if mode == "softmax" else []), provenance=False)
        if mode == "softmax" and trial.seed == 0:
            maps = [{**row, "anomaly_map": np.full((16, 16), row["score"], dtype=np.float16)} for row in scores]
            write_predictions(store.predictions_path(trial.run_id), maps)
    return store


def test_rows_aggregate_seeds_rank_and_mark_problems(populated):
    board = build_leaderboard(populated, sweep="routing")
    assert [row.label for row in board.rows] == [
        "routing=softmax", "routing=gumbel_top1", "routing=top1", "routing=first"
    ]
    softmax = board.row("routing=softmax")
    assert softmax.metrics["i_auroc"].mean == pytest.approx(0.92)
    assert softmax.metrics["i_auroc"].std == pytest.approx(statistics.stdev([0.90, 0.94]))
    assert softmax.metrics["i_auroc"].n == 2 and softmax.status == "complete" and softmax.seeds_text == "2/2"
    assert softmax.per_class["bottle"]["i_auroc"].mean == pytest.approx(0.94)
    assert softmax.metrics["p_auroc"].mean == pytest.approx(0.97)
    assert softmax.efficiency["params_trainable"] == pytest.approx(4_500_000.5)
    assert softmax.efficiency["wall_time_train_s"] == pytest.approx(10.5)
    assert softmax.efficiency["train_throughput_img_s"] is None

    gumbel = board.row("routing=gumbel_top1")
    assert gumbel.status == "partial" and gumbel.metrics["i_auroc"].n == 1 and math.isnan(gumbel.metrics["i_auroc"].std)
    assert gumbel.problems == ["seed 1 failed: CUDA out of memory"]
    first = board.row("routing=first")
    assert first.status == "missing" and first.metrics == {} and first.problems == ["seed 0 missing", "seed 1 missing"]
    assert board.row("routing=top1").metrics["i_auroc"].std == pytest.approx(0.0)
    assert board.classes == CLASSES and board.metrics == ["i_auroc", "p_auroc"]

    # the paper's numbers appear beside the cells it reports (UniLEAD Tables 1 and 3, MVTec AD)
    assert softmax.reported["i_auroc"].value == pytest.approx(0.978)
    assert gumbel.reported["p_auroc"].value == pytest.approx(0.968) and gumbel.reported["p_auroc"].source == "Table 3"
    assert first.reported["i_auroc"].value == pytest.approx(0.965)  # shown even where our cell is missing
    assert board.row("routing=top1").reported["i_auroc"].value == pytest.approx(0.971)


def test_same_rows_without_a_sweep_filter(populated):
    board = build_leaderboard(populated)
    assert len(board.rows) == 4 and board.row("routing=first").status == "missing"


def test_reported_files_are_well_formed():
    values = load_reported()
    assert len(values) >= 60
    table4 = [v for v in values if v.source == "Table 4" and v.metric == "i_auroc"]
    assert len(table4) == 10
    assert {v.config[1][1] for v in table4 if v.config[1][0] == "routing"} == {"softmax"}


def test_terminal_markdown_and_csv(populated):
    board = build_leaderboard(populated, sweep="routing")
    console = Console(record=True, width=250)
    render_terminal(board, console, per_class=True)
    text = console.export_text()
    assert "routing=softmax" in text and "92.00 ± 2.83" in text and "97.8* (Table 1)" in text
    assert "partial (1/2 seeds)" in text and "missing" in text
    assert "routing=gumbel_top1: seed 1 failed: CUDA out of memory" in text
    assert "Per class: I-AUROC" in text and "bottle" in text

    markdown = render_markdown(board)
    assert "| # | Configuration | Seeds | I-AUROC | I-AUROC paper* |" in markdown
    assert "| 1 | routing=softmax | 2/2 | 92.00 ± 2.83 | 97.8* (Table 1) |" in markdown
    assert "## Per class: P-AUROC" in markdown

    rows = list(csv.DictReader(io.StringIO(render_csv(board))))
    mean = next(r for r in rows if r["configuration"] == "routing=softmax" and r["class_name"] == "mean")
    assert float(mean["i_auroc_mean"]) == pytest.approx(92.0) and mean["i_auroc_n"] == "2"  # percent, as displayed
    assert float(mean["i_auroc_reported"]) == pytest.approx(97.8)
    assert {r["class_name"] for r in rows if r["configuration"] == "routing=softmax"} == {"mean", "bottle", "grid"}
    missing = next(r for r in rows if r["configuration"] == "routing=first")
    assert missing["status"] == "missing" and missing["i_auroc_mean"] == ""


def test_html_is_self_contained_with_plots_and_gallery(populated):
    board = build_leaderboard(populated, sweep="routing")
    page = render_html(board, populated)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # metric plots (I- and P-AUROC), GFLOPs vs AUROC, four routing heatmaps (usage per class, selection and
    # gate weight per layer, router entropy), one gallery image per class
    assert page.count("src='data:image/png;base64,") == 2 + 1 + 4 + len(CLASSES)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Samples chosen from routing=softmax" in page and "could not be read" not in page
    assert "<tr class='missing'>" in page and "<tr class='partial'>" in page


def test_gallery_picks_extremes(populated):
    board = build_leaderboard(populated, sweep="routing")
    predictions = list(read_predictions(populated.predictions_path(board.rows[0].complete_run_ids[0])))
    chosen = dict(choose_gallery_samples(predictions))
    anomalous = [p for p in predictions if p.label == 1]
    normal = [p for p in predictions if p.label == 0]
    assert chosen["best anomalous"].score == max(p.score for p in anomalous)
    assert chosen["worst anomalous"].score == min(p.score for p in anomalous)
    assert chosen["worst normal"].score == max(p.score for p in normal)
    assert chosen["best normal"].score == min(p.score for p in normal)


def test_leaderboard_command(populated, tmp_path, capsys):
    assert main(["leaderboard", str(populated.root), "--sweep", "routing"]) == 0
    out = capsys.readouterr().out
    assert "routing=softmax" in out and "routing=first" in out
    assert main(["leaderboard", str(populated.root), "--sweep", "routing", "--format", "html",
                 "--output", str(tmp_path / "report.html")]) == 0
    assert f"HTML report: {tmp_path / 'report.html'}" in capsys.readouterr().out.replace("\n", "")
    assert (tmp_path / "report.html").read_text().count("<img") == 2 + 1 + 4 + len(CLASSES)
    assert main(["leaderboard", str(populated.root), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("rank,configuration,")
    assert main(["leaderboard", str(populated.root), "--sweep", "nope"]) == 1
    assert "sweeps in this store: routing" in capsys.readouterr().err
    assert main(["leaderboard", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "No results in" in err and "harness sweep sweeps/routing.yaml" in err


def test_end_of_sweep_summary_prints_rows_and_writes_default_report(populated):
    from harness.report.final import show_leaderboard_and_write_html

    console = Console(record=True, width=250)
    path = show_leaderboard_and_write_html(populated, "routing", console)
    assert path == populated.root / "reports" / "leaderboard-routing.html" and path.is_file()
    text = console.export_text()
    assert sum(f"routing={mode} " in text for mode in PLAN) == 4
    assert f"HTML report: {path}" in text
    assert show_leaderboard_and_write_html(populated, "other", console) is None


def test_damaged_and_foreign_files_are_named_and_left_out(populated, tmp_path, capsys):
    import shutil

    import pandas as pd

    store = ResultStore(shutil.copytree(populated.root, tmp_path / "copy"))
    board = build_leaderboard(store, sweep="routing")
    damaged_id = board.row("routing=top1").complete_run_ids[0]
    metrics_file = store.root / "metrics" / f"{damaged_id}.parquet"
    metrics_file.write_bytes(metrics_file.read_bytes()[:64])
    (store.root / "runs" / "notes.csv").write_text("a note\n")
    pd.DataFrame({"x": [1]}).to_parquet(store.root / "runs" / "unrelated.parquet")

    assert main(["leaderboard", str(store.root), "--sweep", "routing", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    for name in (metrics_file, store.root / "runs" / "notes.csv", store.root / "runs" / "unrelated.parquet"):
        assert f"warning: left out {name}" in captured.err
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    top1 = next(r for r in rows if r["configuration"] == "routing=top1" and r["class_name"] == "mean")
    assert top1["seeds_complete"] == "1" and float(top1["i_auroc_mean"]) == pytest.approx(70.0)
    assert "None" not in {r["run_ids"] for r in rows}
    problems = build_leaderboard(store, sweep="routing").row("routing=top1").problems
    assert problems == [f"seed 0 damaged, runs again in the next sweep: {metrics_file} (damaged): "
                        f"{store.damaged_runs()[damaged_id][0].reason}"]


def test_nothing_usable_left_is_a_clear_message(tmp_path, capsys):
    store = ResultStore(tmp_path / "results")
    store.write_run(TrialResult({"run_id": "r1", "config_json": {"method": "unilead", "seed": 0}, "seed": 0}), provenance=False)
    runs_file = store.root / "runs" / "r1.parquet"
    runs_file.write_bytes(runs_file.read_bytes()[:30])
    assert main(["leaderboard", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert f"warning: left out {runs_file} (damaged)" in err and "Nothing usable is left in" in err


def test_what_the_papers_report_on_other_datasets_is_shown_apart_with_the_settings_that_differ(populated):
    board = build_leaderboard(populated, sweep="routing")
    table = reported_elsewhere_table(board)
    assert "Method" not in table.headers  # one method on this board
    lines = {(row[0], row[1]): row for row in table.rows}
    softmax_visa = lines[("routing=softmax", "visa")]
    assert softmax_visa[2:4] == ["92.3", "98.7"] and softmax_visa[-2] == "UniLEAD: Table 1" and softmax_visa[-1] == "—"
    assert ("routing=softmax", "mvtec_ad") not in lines  # the board's own dataset: in the main table, not here
    # Table 3 reports gumbel_top1 on MVTec AD only, so on VisA the paper's number is for another routing: named.
    assert lines[("routing=gumbel_top1", "visa")][-1] == "routing=softmax"

    markdown = render_markdown(board)
    assert "## Reported by the papers on other datasets" in markdown and "not comparable" in markdown
    console = Console(record=True, width=250)
    render_terminal(board, console)
    assert "Reported by the papers on other datasets" in console.export_text()
    assert "Reported by the papers on other datasets" in render_html(board, populated)


def test_a_multi_modal_method_puts_its_modalities_in_a_column(tmp_path):
    from harness.report.table import leaderboard_table

    store = ResultStore(tmp_path / "results")
    for modalities, value in ((["rgb"], 0.81), (["rgb", "depth"], 0.93)):
        config = {"method": "unimmad", "preset": "cpu", "dataset": "embedded_3d", "data_root": None, "seed": 0,
                  "method_config": {"modalities": modalities}}
        run = {"run_id": trial_run_id(config, "1", "fingerprint"), "sweep": "modalities", "label": "", "method": "unimmad",
               "preset": "cpu", "dataset": "embedded_3d", "seed": 0, "config_json": config,
               "method_config_json": {"modalities": modalities, "epochs": 2, "base_experts": 8, "leaders": 32, "top_k": 2}}
        metrics = [{"class_name": "mean", "metric": "i_auroc", "value": value}]
        store.write_run(TrialResult(run, metrics, [], []), provenance=False)
    table = leaderboard_table(build_leaderboard(store))
    column = table.headers.index("Modalities")
    assert [row[column] for row in table.rows] == ["rgb+depth", "rgb"]  # ranked by I-AUROC
    # the papers' numbers for the row's own modality set only, each line naming every table it quotes
    elsewhere = reported_elsewhere_table(build_leaderboard(store))
    lines = {(r[0], r[1]): r for r in elsewhere.rows}
    source = elsewhere.headers.index("Source")
    assert "Table 5" in lines[("modalities=rgb,depth", "mvtec_3d")][source] and "Table 15" in lines[("modalities=rgb,depth", "mvtec_3d")][source]
    assert ("modalities=rgb", "mvtec_3d") not in lines and ("modalities=rgb", "mvtec_ad") in lines
    assert "Modalities" not in leaderboard_table(build_leaderboard(populated_store_without_modalities(tmp_path))).headers


def populated_store_without_modalities(tmp_path):
    store = ResultStore(tmp_path / "plain")
    config = {"method": "uniad", "preset": "cpu", "dataset": "embedded", "data_root": None, "seed": 0, "method_config": {}}
    run = {"run_id": trial_run_id(config, "1", "fingerprint"), "sweep": "plain", "label": "", "method": "uniad",
           "preset": "cpu", "dataset": "embedded", "seed": 0, "config_json": config, "method_config_json": {"epochs": 2}}
    store.write_run(TrialResult(run, [{"class_name": "mean", "metric": "i_auroc", "value": 0.9}], [], []), provenance=False)
    return store


def test_routing_heatmaps_split_by_modality_and_expert_set():
    from harness.report.html import routing_groups

    rows = [{"layer": f"s1.k3.{m}.{kind}", "expert": f"{kind[:-1]}{i}", "class_name": "c", "selection_freq": 0.5,
             "gate_mean": 0.5} for m in ("rgb", "depth") for kind, n in (("leaders", 4), ("bases", 2)) for i in range(n)]
    groups = routing_groups(rows)
    assert sorted(groups) == ["depth bases", "depth leaders", "rgb bases", "rgb leaders"]
    assert {r["expert"] for r in groups["rgb leaders"]} == {"leader0", "leader1", "leader2", "leader3"}
    plain = [{"layer": f"decoder.{l}", "expert": f"adapter_d{d}", "class_name": "c", "selection_freq": 0.1, "gate_mean": 0.2}
             for l in range(2) for d in (16, 32)]
    assert list(routing_groups(plain)) == [""]


def test_sample_scores_that_do_not_reproduce_the_stored_metrics_give_no_interval(populated):
    # the fixture's scores are the sample index, its metrics are made up: the bootstrap must not pretend
    board = build_leaderboard(populated, sweep="routing")
    softmax = board.row("routing=softmax")
    assert softmax.intervals == {} and softmax.uncertainty_note.startswith("no bootstrap interval: the stored sample scores give i_auroc")
    assert all(row.tie is None for row in board.rows)  # row 1 has nothing to test against
    markdown = render_markdown(board)
    assert "routing=softmax: no bootstrap interval: the stored sample scores give" in markdown
    assert "No tie test on I-AUROC: row 1 has no resampled I-AUROC." in markdown
    assert "routing=first: no bootstrap interval" not in markdown  # no complete run: nothing to explain


def test_at_80_columns_no_table_cell_is_cut(populated):
    console = Console(width=80, record=True)
    render_terminal(build_leaderboard(populated, sweep="routing"), console)
    text = console.export_text()
    assert "Params" in text[text.index("Efficiency"):] and "…" not in text
    assert "mvtec_lo" in text  # the long dataset name is there, folded over lines


def test_runs_of_configurations_an_edited_sweep_no_longer_has_are_left_out_and_counted(populated, tmp_path):
    import json
    import shutil

    from harness.report.table import leaderboard_table

    import pyarrow.parquet as pq

    store = ResultStore(shutil.copytree(populated.root, tmp_path / "results"))
    trials = store.read("trials")
    routings = [json.loads(config)["method_config"]["routing"] for config in trials.column("config_json").to_pylist()]
    kept = [i for i, routing in enumerate(routings) if routing != "top1"]
    (trials_file,) = (store.root / "trials").glob("routing*.parquet")
    pq.write_table(trials.take(kept), trials_file)  # the sweep file lost one mode, and was launched again
    board = build_leaderboard(store, sweep="routing")
    assert "routing=top1" not in [row.label for row in board.rows] and board.earlier_runs == 2
    assert board.row("routing=softmax").metrics["i_auroc"].mean == pytest.approx(0.92)
    assert any("2 run(s) of configurations no longer in the file of sweep routing" in note
               for note in leaderboard_table(board, ["i_auroc"], ()).footnotes)
    assert "routing=top1" in [row.label for row in build_leaderboard(store).rows]  # every run of the store
